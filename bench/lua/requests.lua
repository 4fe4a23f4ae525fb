-- wrk script of every benchmark run: which requests to send, and a machine-readable
-- summary at the end. Arguments after `--`:
--
--   bearer <n> <path>          Authorization: Bearer tg_bench_<i>, i cycling over 0..n-1
--   apikey <n> <path>          x-api-key: tg_bench_<i>
--   xff <n> <path>             X-Forwarded-For: 10.a.b.c, one of n client addresses
--   check <n> <path> <limits> <token>
--                              POST <path> with the quota service's check body for key
--                              bench/key:tg_bench_<i>; <limits> is its "limits" JSON array,
--                              <token> the service token (Authorization: Bearer <token>)
--   body <n> <path> <json> [<header>]
--                              as bearer, with the JSON body <json> (and a header written
--                              "name: value", if given)
--
-- Every request is formatted once in init(), so request() costs the same for 1 and for
-- 10,000 variants and the load tool stays out of the comparison.

local requests = {}
local count = 0
local next_index = 0

local function token(i)
  return string.format("tg_bench_%05d", i)
end

function init(args)
  local mode, n, path = args[1], tonumber(args[2]), args[3]
  if not (mode and n and n >= 1 and path) then
    error("usage: -- bearer|apikey|xff|check|body <n> <path> [<limits JSON> | <body> [<header>]]")
  end
  for i = 0, n - 1 do
    local headers, body = {}, nil
    if mode == "bearer" then
      headers["Authorization"] = "Bearer " .. token(i)
    elseif mode == "apikey" then
      headers["x-api-key"] = token(i)
    elseif mode == "xff" then
      headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
    elseif mode == "body" then
      headers["Authorization"] = "Bearer " .. token(i)
      headers["Content-Type"] = "application/json"
      body = args[4]
      local name, value = string.match(args[5] or "", "^([^:]+):%s*(.*)$")
      if name then
        headers[name] = value
      end
    elseif mode == "check" then
      headers["Content-Type"] = "application/json"
      headers["Authorization"] = "Bearer " .. args[5]
      body = string.format('{"key":"bench/key:%s","cost":1,"limits":%s}', token(i), args[4])
    else
      error("unknown mode " .. mode)
    end
    requests[i + 1] = wrk.format("POST", path, headers, body)
  end
  count = n
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
