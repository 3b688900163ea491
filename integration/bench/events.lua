-- wrk script: POSTs iconik-style events, one line of a file per request, in turn.
--
--   wrk -t1 -c16 -d10s -s events.lua http://127.0.0.1:PORT -- EVENTS.ndjson [PATH]
--
-- Every request is formatted once, in init(); request() only hands them out.
-- done() prints one line "WRK_JSON {...}" with the counts and latency
-- percentiles (microseconds) that run.py reads.

local requests = {}
local next_index = 0

function init(args)
  local file = args[1]
  local path = args[2] or "/API/events/v1/events"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(file) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", path, headers, line)
    end
  end
  if #requests == 0 then
    error("no events in " .. file)
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
