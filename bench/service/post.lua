-- wrk script for bench/service/run: POST the file $BODY_FILE with Content-Type $CONTENT_TYPE on every
-- request, and print the results as one JSON line (prefixed "WRK_JSON ") when done.
-- Latencies are wrk's own (microseconds in, milliseconds out).

local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  local ms = function(us) return us / 1000 end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.6f, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_ms": {"min": %.3f, "mean": %.3f, "stdev": %.3f, "max": %.3f, ' ..
    '"p50": %.3f, "p90": %.3f, "p99": %.3f, "p99_9": %.3f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    ms(latency.min), ms(latency.mean), ms(latency.stdev), ms(latency.max),
    ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)),
    ms(latency:percentile(99.9))))
end
