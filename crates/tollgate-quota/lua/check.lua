-- check.lua: one all-or-nothing decision over every limit of one metered key.
--
-- KEYS[1]  tg:{<metered key>}, a hash with one field per limit name. Each value is
--          "<definition> <a> <b>":
--            definition  t:<limit>:<window_secs>:<capacity>  (token bucket, GCRA)
--                        f:<limit>:<window_secs>             (fixed window)
--            token bucket: a = theoretical arrival time, in microseconds since the epoch; b = 0
--            fixed window: a = index of the window since the epoch;                     b = units used in it
--          A field whose definition differs from the requested one is an old limit: it
--          counts as absent and is replaced by the next admitted request.
-- ARGV[1]  cost: units every limit must have. 0 only reads: nothing is written.
-- ARGV[2..] four per limit, in request order: name, definition, x, y where
--            token bucket: x = interval_us = ceil(window_us / limit), y = depth_us = interval_us * capacity
--            fixed window: x = window_us, y = limit
--
-- Returns { admitted, then per limit: admitted, remaining, reset_after_us, retry_after_us, window },
-- admitted being 1 or 0, window the fixed window's index (floor(now / window_us)) and -1
-- for a token bucket. The arithmetic is tollgate_core::limit::evaluate's, in microseconds.
--
-- Why a script: the request is admitted only if every limit admits it, and a refused
-- request must consume nothing from any limit. Read-then-MULTI from the service could
-- not guarantee that: between the read and the EXEC another service replica may charge
-- the same limits, and keys may expire between the commands of a MULTI. A script runs
-- alone, so the read, the decision and the write are one step, in one round trip.
--
-- Why TIME here: every replica of the service then decides on the same clock (Redis 7
-- replicates scripts by their effects, so replicas and the AOF get the written values).
-- Time is kept in microseconds: Lua numbers are doubles, exact up to 2^53, which holds
-- microseconds since the epoch (and any bucket depth tollgate accepts) but not nanoseconds.

local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local cost = tonumber(ARGV[1])
local count = (#ARGV - 1) / 4
local key = KEYS[1]
-- Locals: global lookups cost on every call of a hot script.
local find, sub, format, floor = string.find, string.sub, string.format, math.floor

local stored
if count == 1 then
  stored = { redis.call('HGET', key, ARGV[2]) }
else
  local names = {}
  for i = 1, count do names[i] = ARGV[4 * i - 2] end
  stored = redis.call('HMGET', key, unpack(names))
end

local all_admitted = true
local results = { 1 }
local writes = { 'HSET', key }
local longest_idle = 0

for i = 1, count do
  local base = 4 * i - 2
  local definition = ARGV[base + 1]
  local x = tonumber(ARGV[base + 2])
  local y = tonumber(ARGV[base + 3])
  local a, b
  -- The stored value is "<definition> <a> <b>"; plain finds are cheaper than a pattern.
  local value = stored[i]
  if value then
    local space = find(value, ' ', 1, true)
    if space and sub(value, 1, space - 1) == definition then
      local second = find(value, ' ', space + 1, true)
      if second then
        a = tonumber(sub(value, space + 1, second - 1))
        b = tonumber(sub(value, second + 1))
      end
    end
  end

  local admitted, remaining, reset_after, retry_after, state_a, state_b, idle_after
  local window_index = -1
  if sub(definition, 1, 1) == 't' then
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

  local r = 5 * i - 3
  if admitted then
    results[r] = 1
    writes[#writes + 1] = ARGV[base]
    -- %d, not tostring: tostring keeps only 14 significant digits.
    writes[#writes + 1] = format('%s %d %d', definition, state_a, state_b)
    if idle_after > longest_idle then longest_idle = idle_after end
  else
    results[r] = 0
    all_admitted = false
  end
  results[r + 1] = remaining
  results[r + 2] = reset_after
  results[r + 3] = retry_after
  results[r + 4] = window_index
end

if all_admitted then
  if cost > 0 then
    redis.call(unpack(writes))
    -- The key lives until every limit in it is full again; limits this request did not
    -- touch keep the expiry they set.
    local ttl_ms = floor((longest_idle + 999) / 1000)
    if redis.call('PTTL', key) < ttl_ms then
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
else
  results[1] = 0
end
return results
