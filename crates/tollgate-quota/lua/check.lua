-- check.lua: all-or-nothing decisions, one per metered key, each over every limit of its key.
--
-- KEYS[1..n]  tg:{<metered key>}, a hash with one field per limit name. Each value is
--          "<definition> <a> <b>":
--            definition  t:<limit>:<window_secs>:<capacity>  (token bucket, GCRA)
--                        f:<limit>:<window_secs>             (fixed window)
--            token bucket: a = theoretical arrival time, in microseconds since the epoch; b = 0
--            fixed window: a = index of the window since the epoch;                     b = units used in it
--          A field whose definition differs from the requested one is an old limit: it
--          counts as absent and is replaced by the next admitted request.
--          The same key may come more than once: the decisions are made in KEYS order,
--          each on what the ones before it wrote.
-- ARGV     one key (n = 1): five per limit (below).
--          n > 1 keys: for each key in KEYS order: count, then five per limit for its
--          `count` limits.
--          five per limit, in request order: name, definition, x, y, cost where
--            token bucket: x = interval_us = ceil(window_us / limit), y = depth_us = interval_us * capacity
--            fixed window: x = window_us, y = limit
--            cost: units this limit must have; 0 only reads it (it is not written).
--
-- Returns, for each key in KEYS order: admitted, then per limit: admitted, remaining,
-- reset_after_us, retry_after_us, window; admitted being 1 or 0 (-1: this key could not be
-- read or written, as when it is not a hash: nothing was charged to it, the other keys of
-- the call were decided as usual, and its per-limit numbers are 0), window the fixed window's
-- index (floor(now / window_us)) and -1 for a token bucket. All in one flat array.
-- The arithmetic is tollgate_core::limit::evaluate's, in microseconds. After an admitted
-- check that charged something, the key's TTL is set again (expiry.lua, in front of this).
--
-- Why a script: the request is admitted only if every limit admits it, and a refused
-- request must consume nothing from any limit. Read-then-MULTI from the service could
-- not guarantee that: between the read and the EXEC another service replica may charge
-- the same limits, and keys may expire between the commands of a MULTI. A script runs
-- alone, so the read, the decision and the write are one step, in one round trip.
-- Several keys in one call (the service batches the checks waiting at the same moment)
-- spare Redis a command, a script start and a reply per decision; on a Redis Cluster
-- the service sends one key per call (keys of one call must share a slot).
--
-- Why TIME here: every replica of the service then decides on the same clock (Redis 7
-- replicates scripts by their effects, so replicas and the AOF get the written values).
-- Time is kept in microseconds: Lua numbers are doubles, exact up to 2^53, which holds
-- microseconds since the epoch (and any bucket depth tollgate accepts) but not nanoseconds.

local call, pcall = redis.call, redis.pcall
-- A failed redis.pcall returns a table with an `err` field.
local function failed(reply) return type(reply) == 'table' and reply.err ~= nil end
local time = call('TIME')
local now = time[1] * 1000000 + time[2]
-- Locals: global lookups cost on every call of a hot script.
local find, sub, byte, format, floor, tonumber, unpack = string.find, string.sub, string.byte, string.format, math.floor, tonumber, unpack
local T = byte('t')

local nkeys = #KEYS
local out = {}
local o = 0
local p = 1

for k = 1, nkeys do
  local key = KEYS[k]
  local count
  if nkeys == 1 then
    count = #ARGV / 5
  else
    count = tonumber(ARGV[p])
    p = p + 1
  end

  local stored
  if count == 1 then
    local value = pcall('HGET', key, ARGV[p])
    if not failed(value) then stored = { value } end
  else
    local names = {}
    for i = 1, count do names[i] = ARGV[p + 5 * i - 5] end
    local values = pcall('HMGET', key, unpack(names))
    if not failed(values) then stored = values end
  end

  local first = o + 1
  o = o + 1
  local all_admitted = true
  local writes = nil
  local longest_idle = 0
  -- Fields this check leaves as they are (a cost of 0) but holds: their stored values.
  local kept = nil

  if not stored then
    -- The key is not a hash: this check fails alone (-1), the others of the call go on.
    out[first] = -1
    for i = 1, 5 * count do out[o + i] = 0 end
    o = o + 5 * count
    p = p + 5 * count
  else
    for i = 1, count do
      local name = ARGV[p]
      local definition = ARGV[p + 1]
      local x = tonumber(ARGV[p + 2])
      local y = tonumber(ARGV[p + 3])
      local cost = tonumber(ARGV[p + 4])
      p = p + 5
      local a, b
      -- The stored value is "<definition> <a> <b>"; plain finds are cheaper than a pattern.
      local value = stored[i]
      if value then
        local dl = #definition
        if sub(value, dl + 1, dl + 1) == ' ' and sub(value, 1, dl) == definition then
          local second = find(value, ' ', dl + 2, true)
          if second then
            a = tonumber(sub(value, dl + 2, second - 1))
            b = tonumber(sub(value, second + 1))
          end
        end
      end

      local admitted, remaining, reset_after, retry_after, state_a, state_b, idle_after
      local window_index = -1
      if byte(definition, 1) == T then
        local interval, depth = x, y
        local tat = now
        if a and a > now then tat = a end
        local new_tat = tat + cost * interval
        if new_tat - now <= depth then
          admitted = true
          remaining = floor((depth - (new_tat - now)) / interval)
          reset_after = new_tat - now
          retry_after = 0
          state_a, state_b = new_tat, 0
          idle_after = new_tat - now
        else
          admitted = false
          local left = depth - (tat - now)
          if left < 0 then left = 0 end
          remaining = floor(left / interval)
          reset_after = tat - now
          retry_after = new_tat - now - depth
        end
      else
        local window, quota = x, y
        local index = floor(now / window)
        window_index = index
        local used = 0
        if a == index then used = b end
        reset_after = (index + 1) * window - now
        admitted = used + cost <= quota
        if admitted then
          used = used + cost
          retry_after = 0
          state_a, state_b = index, used
          idle_after = reset_after
        else
          retry_after = reset_after
        end
        remaining = quota - used
        if remaining < 0 then remaining = 0 end
      end

      if admitted then
        out[o + 1] = 1
        if all_admitted and cost > 0 then
          if not writes then writes = { 'HSET', key } end
          local w = #writes
          writes[w + 1] = name
          -- %d, not tostring: tostring keeps only 14 significant digits.
          writes[w + 2] = format('%s %d %d', definition, state_a, state_b)
          if idle_after > longest_idle then longest_idle = idle_after end
        elseif value then
          if not kept then kept = {} end
          kept[#kept + 1] = name
          kept[#kept + 1] = value
        end
      else
        out[o + 1] = 0
        all_admitted = false
      end
      out[o + 2] = remaining
      out[o + 3] = reset_after
      out[o + 4] = retry_after
      out[o + 5] = window_index
      o = o + 5
    end

    if all_admitted then
      out[first] = 1
      if writes then
        if failed(pcall(unpack(writes))) then
          -- Not written (Redis out of memory, say): this check fails alone.
          out[first] = -1
        else
          -- The key lives until every limit in it is full again (expiry.lua): the ones
          -- written, the ones read and kept, and any others the hash holds.
          local known = {}
          for w = 3, #writes, 2 do known[#known + 1] = writes[w] end
          if kept then
            for j = 1, #kept, 2 do
              known[#known + 1] = kept[j]
              local life = life_of(kept[j + 1], now)
              if life > longest_idle then longest_idle = life end
            end
          end
          expire_meter(key, now, known, longest_idle)
        end
      end
    else
      out[first] = 0
    end
  end
end
return out
