-- wrk script of bench/serving.py: POST pre-built bodies in rotation, check every answer, report JSON.
--
--   wrk -t2 -c8 -d20s -s bench/serving_load.lua http://127.0.0.1:PORT -- BODIES PATH MUST_CONTAIN [HEADER...]
--
-- BODIES: a file with one JSON request body per line; PATH: the endpoint (e.g. /v1/predict);
-- MUST_CONTAIN: a plain string every 2xx body must contain (else it counts as a bad body);
-- HEADER: extra "Name: value" request headers. Each thread starts at its own offset in the
-- rotation. A 2xx body that carries "fallback" set to anything but null counts as a fallback.
-- done() prints one line, BENCH_JSON {...}, with the counts and latency percentiles in
-- microseconds (wrk counts answers with status >= 400 in errors.status).

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file, path = args[1], args[2] or "/"
   must_contain = args[3] or ""
   local headers = {["Content-Type"] = "application/json"}
   for i = 4, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      if name then headers[name] = value end
   end
   requests_ = {}
   for line in io.lines(file) do
      if #line > 0 then requests_[#requests_ + 1] = wrk.format("POST", path, headers, line) end
   end
   if #requests_ == 0 then error("no request bodies in " .. file) end
   next_ = (id * 7919) % #requests_ + 1
   ok, bad, fallback = 0, 0, 0
end

function request()
   local r = requests_[next_]
   next_ = next_ % #requests_ + 1
   return r
end

function response(status, headers, body)
   if status < 200 or status > 299 then return end
   if must_contain ~= "" and not body:find(must_contain, 1, true) then
      bad = bad + 1
      return
   end
   ok = ok + 1
   if body:find('"fallback"%s*:') and not body:find('"fallback"%s*:%s*null') then
      fallback = fallback + 1
   end
end

function done(summary, latency, requests)
   local ok_, bad_, fallback_ = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok_ = ok_ + thread:get("ok")
      bad_ = bad_ + thread:get("bad")
      fallback_ = fallback_ + thread:get("fallback")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"ok_bodies":%d,"bad_bodies":%d,"fallback":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f,"mean":%.1f}}\n',
      summary.requests, summary.duration, ok_, bad_, fallback_,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
