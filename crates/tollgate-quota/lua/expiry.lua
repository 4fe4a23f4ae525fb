-- expiry.lua: the TTL of a metered key. The service puts this file, then state.lua, in
-- front of check.lua, return.lua and settle.lua (one script each); they call expire_meter
-- after they wrote.
--
-- A metered key lives until every limit stored in it is as good as absent: a fixed window
-- until the end of the window it counts in (at most one window from now), a token bucket
-- until it is full again, its TAT (at most one depth from now after a check, two after a
-- settlement's overrun). The TTL is set to exactly that after every write, shorter as
-- well as longer, over every field of the hash: a key never outlives the longest limit
-- stored in it. (A TTL that was only ever raised kept keys for the rest of a long window
-- that a limit no longer had, or that a redefined limit of the same name never had.)

-- Microseconds from now until a stored value "<definition> <a> <b>" is as good as absent,
-- at most two depths of a token bucket or one window of a fixed window; 0 for a value
-- that no version of the scripts wrote.
local function life_of(value, now)
  local limit, window_secs, capacity, tat = string.match(value, '^t:(%d+):(%d+):(%d+) (%d+) %d+$')
  if tat then
    local interval = math.ceil(tonumber(window_secs) * 1000000 / tonumber(limit))
    local life = tonumber(tat) - now
    local most = 2 * interval * tonumber(capacity)
    if life > most then life = most end
    if life < 0 then life = 0 end
    return life
  end
  local secs, index, used = string.match(value, '^f:%d+:(%d+) (%d+) (%d+)$')
  if index and tonumber(used) > 0 then
    local window = tonumber(secs) * 1000000
    local life = (tonumber(index) + 1) * window - now
    if life > window then life = window end
    if life < 0 then life = 0 end
    return life
  end
  return 0
end

-- Sets the TTL of the meter `key` after a write, from every field it holds. `known` lists
-- the fields whose life the caller knows already, `longest` the longest of those lives
-- (microseconds); the other fields are read. A key whose limits are all as good as absent
-- is deleted.
local function expire_meter(key, now, known, longest)
  if redis.call('HLEN', key) > #known then
    local is_known = {}
    for i = 1, #known do is_known[known[i]] = true end
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      if not is_known[fields[i]] then
        local life = life_of(fields[i + 1], now)
        if life > longest then longest = life end
      end
    end
  end
  if longest > 0 then
    redis.call('PEXPIRE', key, math.ceil(longest / 1000))
  else
    redis.call('DEL', key)
  end
end

