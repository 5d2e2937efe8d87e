-- wrk script: body-less POSTs round-robin over prepared targets: streamcap
-- heartbeats (over lease tokens) or starts (over fresh users' grants).
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/post.lua http://127.0.0.1:PORT -- TARGETS [count]
--
-- TARGETS has one line per request target, "path<TAB>Authorization value", as
-- written by streamcap-driver preload:
--   --tokens-out FILE: /v1/users/{user}/sessions/{id}/heartbeat and "Bearer <lease
--     token>". Tokens are reused (a lease token stays valid until its expiry,
--     3 x poll), so the file only has to outlive the run.
--   --grants-out FILE --grants M (with --sessions 0 for grants only):
--     /v1/users/{user}/sessions and "Bearer <grant>" of fresh users (limit 3).
--     Every start creates a session; when a run sends more than M starts the
--     list wraps and users start their 2nd and 3rd sessions, a 4th would get
--     409, so give M >= starts / 3 (bench.sh writes a fresh file per run).
--
-- Failures of both routes are all >= 400, so wrk's own count of status > 399
-- (summary.errors.status, printed as "Non-2xx or 3xx responses") is the exact
-- number of failed answers; done() prints it. That costs nothing per request.
-- With the extra argument "count", a response() callback also counts answers
-- by status; wrk then parses every header and body, which costs throughput
-- (see loadtest/driver/README.md), so the benchmark does not use it.
--
-- Every request string is built once at init; request() only picks the next
-- one. With -tN each thread starts at its own offset (thread i at i/16 of the
-- file), so threads do not send the same target in lockstep.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local requests = {}
local n = 0
local i = 0
statuses = {}

local function load(file)
   local f, err = io.open(file, "r")
   if not f then
      error("post.lua: cannot open targets file: " .. tostring(err))
   end
   -- The request is assembled by hand (what wrk.format would build, ~3x
   -- faster to load a million lines); wrk.headers.Host is wrk's own Host.
   local head = " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\nAuthorization: "
   local tail = "\r\nContent-Length: 0\r\n\r\n"
   local find, sub, byte = string.find, string.sub, string.byte
   -- The collector would re-walk the growing table over and over.
   collectgarbage("stop")
   for line in f:lines() do
      local tab = find(line, "\t", 1, true)
      if tab and tab > 1 then
         local stop = #line
         if byte(line, stop) == 13 then
            stop = stop - 1
         end
         n = n + 1
         requests[n] = "POST " .. sub(line, 1, tab - 1) .. head .. sub(line, tab + 1, stop) .. tail
      end
   end
   f:close()
   collectgarbage("restart")
   if n == 0 then
      error("post.lua: no targets in " .. file)
   end
end

function init(args)
   local file = args[1] or os.getenv("TARGETS")
   if not file then
      error("post.lua: pass the targets file after --, e.g. -- tokens.tsv")
   end
   load(file)
   i = math.floor(n * (thread_index or 0) / 16) % n
   if args[2] == "count" then
      response = function(status, headers, body)
         statuses[status] = (statuses[status] or 0) + 1
      end
   end
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return requests[i]
end

function done(summary, latency, requests)
   io.write(string.format("failed answers (status >= 400): %d\n", summary.errors.status))
   local totals, counted = {}, false
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses") or {}) do
         totals[status] = (totals[status] or 0) + count
         counted = true
      end
   end
   if counted then
      for status, count in pairs(totals) do
         io.write(string.format("status %s: %d\n", tostring(status), count))
      end
   else
      io.write("status counts: not collected (pass \"count\" after the targets file)\n")
   end
end
