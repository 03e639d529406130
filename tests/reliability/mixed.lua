-- wrk script of the reliability suite (load.py): rotates the requests listed in $WRK_REQUESTS and
-- records every answer, so that the test can check all of them, not a sample.
--
-- $WRK_REQUESTS is a file of lines "kind<TAB>path<TAB>content type<TAB>body file". Each request carries
-- its kind as X-Request-ID, which the service echoes; an answer is keyed by that kind and the model
-- version it names. Identical answers are counted once: a version answers a request the same way
-- every time, so the test compares each distinct body (at most MAX_DISTINCT per key) with the
-- version's forward pass. At the end one JSON object goes to $WRK_REPORT.

local MAX_DISTINCT = 20
local MAX_FAILURES_KEPT = 20

local requests = {}
for line in io.lines(os.getenv("WRK_REQUESTS")) do
  local kind, path, content_type, file = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)$")
  local f = assert(io.open(file, "rb"))
  local body = f:read("*a")
  f:close()
  requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = content_type, ["X-Request-ID"] = kind}, body)
end

-- Per-thread state (every wrk thread runs this file in its own Lua state). Flat tables of strings
-- and numbers: wrk copies those from a thread's state in done(), but crashes on nested tables.
local n = 0
answers = {}      -- "kind version\n" .. body -> count
distinct = {}     -- "kind version" -> number of distinct bodies kept
unkept = 0        -- 2xx answers whose body was not kept (more than MAX_DISTINCT distinct ones)
failures = {}     -- status -> count, for answers that are not 2xx
failed_bodies = {}

function request()
  n = n + 1
  return requests[n % #requests + 1]
end

function response(status, headers, body)
  local kind = headers["X-Request-ID"] or "?"
  if status < 200 or status > 299 then
    failures[tostring(status)] = (failures[tostring(status)] or 0) + 1
    if #failed_bodies < MAX_FAILURES_KEPT then
      failed_bodies[#failed_bodies + 1] = status .. " " .. kind .. " " .. body
    end
    return
  end
  local key = kind .. " " .. (body:match('"version":%s*(%d+)') or "?")
  local entry = key .. "\n" .. body
  if answers[entry] then
    answers[entry] = answers[entry] + 1
  elseif (distinct[key] or 0) < MAX_DISTINCT then
    answers[entry] = 1
    distinct[key] = (distinct[key] or 0) + 1
  else
    unkept = unkept + 1
  end
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, _)
  local out = {}
  local function add(s) out[#out + 1] = s end
  local e = summary.errors
  add(string.format('{"requests": %d, "duration_s": %.3f, "socket_errors": {"connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d}, "latency_ms": {"p50": %.3f, "p99": %.3f, "max": %.3f}, ',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  local answer_items, failure_items, body_items, overflowed = {}, {}, {}, 0
  for _, thread in ipairs(threads) do
    for entry, count in pairs(thread:get("answers")) do
      local key, body = entry:match("^([^\n]*)\n(.*)$")
      answer_items[#answer_items + 1] = string.format('{"key": %s, "count": %d, "body": %s}',
        quote(key), count, quote(body))
    end
    for status, count in pairs(thread:get("failures")) do
      failure_items[#failure_items + 1] = string.format('{"status": %s, "count": %d}', status, count)
    end
    for _, body in ipairs(thread:get("failed_bodies")) do
      body_items[#body_items + 1] = quote(body)
    end
    overflowed = overflowed + thread:get("unkept")
  end
  add('"answers": [' .. table.concat(answer_items, ", ") .. '], ')
  add('"failures": [' .. table.concat(failure_items, ", ") .. '], ')
  add('"failed_bodies": [' .. table.concat(body_items, ", ") .. '], ')
  add(string.format('"unkept": %d}', overflowed))
  local f = assert(io.open(os.getenv("WRK_REPORT"), "w"))
  f:write(table.concat(out))
  f:close()
end
