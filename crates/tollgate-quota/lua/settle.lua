-- settle.lua: charges every listed limit of one metered key what a request used instead
-- of what its check reserved, in one step, once per settlement id.
--
-- KEYS[1]  tg:{<metered key>}, the hash check.lua writes (field = limit name,
--          value = "<definition> <a> <b>"; see check.lua).
-- KEYS[2]  tg:{<metered key>}:settle:<id>: exists while the settlement is remembered. Its
--          hash tag is KEYS[1]'s, so both keys are in one Redis Cluster slot.
-- ARGV[1]  marker_ttl_ms: how long KEYS[2] is kept.
-- ARGV[2..] seven per limit, in request order: name, definition, x, y, w, reserved, used where
--            token bucket: x = interval_us, y = depth_us (as for check.lua), w = 0 (unused)
--            fixed window: x = window_us, y = limit, w = the window index the units were
--                          reserved in (the check answer's window)
--
-- Returns 1 when the settlement is applied now; 0 when KEYS[2] exists (it was applied
-- before): then nothing is written at all.
--
-- Per limit, used < reserved gives the difference back as return.lua does: a token
-- bucket's TAT moves back by that many intervals, never before now; a fixed window's
-- count falls by at most its count. used > reserved charges the difference even past
-- the limit (it was spent already): a token bucket's TAT moves forward from max(TAT, now),
-- to at most now + 2 * depth (one full bucket below empty: this bounds the key's TTL); a
-- fixed window's count grows. A fixed window changes only while w is the current window.
-- A field that is absent or holds another definition counts as a fresh state, as in
-- check.lua: nothing to give back, an overrun is charged (and replaces it).
-- After a write the key's TTL is set again (expiry.lua, in front of this).
--
-- Why a script: the marker and the counts change together or not at all, so that a retry
-- (the first answer lost, or timed out after Redis ran it) can never charge twice; the
-- time is Redis's TIME, as for check.lua.

local call = redis.call
local marker = KEYS[2]
if call('EXISTS', marker) == 1 then
  return 0
end
local time = call('TIME')
local now = time[1] * 1000000 + time[2]
local key = KEYS[1]
local count = (#ARGV - 1) / 7
local sub, format, floor = string.sub, string.format, math.floor

local names = {}
for i = 1, count do names[i] = ARGV[7 * i - 5] end
local stored = call('HMGET', key, unpack(names))

local writes = { 'HSET', key }

for i = 1, count do
  local base = 7 * i - 5
  local definition = ARGV[base + 1]
  local x = tonumber(ARGV[base + 2])
  local y = tonumber(ARGV[base + 3])
  local w = tonumber(ARGV[base + 4])
  local reserved = tonumber(ARGV[base + 5])
  local used = tonumber(ARGV[base + 6])
  local a, b = stored_state(stored[i], definition)

  local new_value
  if sub(definition, 1, 1) == 't' then
    local interval, depth = x, y
    local tat = a or now
    local new_tat = tat
    if used < reserved then
      if tat > now then
        new_tat = tat - (reserved - used) * interval
        if new_tat < now then new_tat = now end
      end
    elseif used > reserved then
      if tat < now then tat = now end
      new_tat = tat + (used - reserved) * interval
      local most = now + 2 * depth
      if new_tat > most then new_tat = most end
    end
    if new_tat ~= (a or now) then
      new_value = format('%s %d %d', definition, new_tat, 0)
    end
  else
    local window = x
    local index = floor(now / window)
    if w == index then
      local counted = 0
      if a == index then counted = b end
      local new_count = counted
      if used < reserved then
        new_count = counted - (reserved - used)
        if new_count < 0 then new_count = 0 end
      elseif used > reserved then
        new_count = counted + (used - reserved)
      end
      if new_count ~= counted then
        new_value = format('%s %d %d', definition, index, new_count)
      end
    end
  end
  if new_value then
    writes[#writes + 1] = names[i]
    writes[#writes + 1] = new_value
  end
end

if #writes > 2 then
  call(unpack(writes))
  expire_meter(key, now, {}, 0)
end
call('SET', marker, '1', 'PX', ARGV[1])
return 1
