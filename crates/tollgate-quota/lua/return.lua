-- return.lua: gives units back to every listed limit of one metered key, in one step.
--
-- KEYS[1]  tg:{<metered key>}, the hash check.lua writes (field = limit name,
--          value = "<definition> <a> <b>"; see check.lua).
-- ARGV[1]  units: what every limit gets back.
-- ARGV[2..] four per limit, in request order: name, definition, x, w where
--            token bucket: x = interval_us (as for check.lua), w = 0 (unused)
--            fixed window: x = window_us,                      w = the window index the
--                          units were taken in (the check answer's window)
--
-- Returns { per limit: units given back }.
--
-- Token bucket: the TAT moves back by units * interval_us, never before now (a bucket is
-- never fuller than full); what is given back is min(units, ceil((tat - now) / interval_us)).
-- Fixed window: the count falls by min(units, used), and only if the stored window is the
-- one named and still the current one, so that a return after the reset never gives units
-- to the new window. A field that is absent or holds another definition gets nothing.
-- After a write the key's TTL is set again (expiry.lua, in front of this): a fuller limit
-- may be full again sooner.

local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local units = tonumber(ARGV[1])
local count = (#ARGV - 1) / 4
local key = KEYS[1]
local sub, format, floor, ceil = string.sub, string.format, math.floor, math.ceil

local names = {}
for i = 1, count do names[i] = ARGV[4 * i - 2] end
local stored = redis.call('HMGET', key, unpack(names))

local returned = {}
local writes = { 'HSET', key }

for i = 1, count do
  local base = 4 * i - 2
  local definition = ARGV[base + 1]
  local x = tonumber(ARGV[base + 2])
  local w = tonumber(ARGV[base + 3])
  local a, b = stored_state(stored[i], definition)

  local given = 0
  if a then
    if sub(definition, 1, 1) == 't' then
      local interval = x
      if a > now and interval > 0 then
        given = ceil((a - now) / interval)
        if given > units then given = units end
        local tat = a - units * interval
        if tat < now then tat = now end
        if given > 0 then
          writes[#writes + 1] = names[i]
          writes[#writes + 1] = format('%s %d %d', definition, tat, 0)
        end
      end
    else
      local window = x
      local index = floor(now / window)
      if a == w and a == index then
        given = units
        if given > b then given = b end
        if given > 0 then
          writes[#writes + 1] = names[i]
          writes[#writes + 1] = format('%s %d %d', definition, a, b - given)
        end
      end
    end
  end
  returned[i] = given
end

if #writes > 2 then
  redis.call(unpack(writes))
  expire_meter(key, now, {}, 0)
end
return returned
