-- usage.lua: what the store holds for one metered key, read together with the time.
--
-- KEYS[1]  tg:{<metered key>}, the hash check.lua writes (field = limit name,
--          value = "<definition> <a> <b>"; see check.lua).
-- Returns { seconds, microseconds, field1, value1, field2, value2, ... }.
--
-- A script only so that the time comes from the same Redis as the counts, as it does
-- for check.lua (on a cluster, a separate TIME could go to another node).

local time = redis.call('TIME')
local reply = { time[1], time[2] }
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields do
  reply[i + 2] = fields[i]
end
return reply
