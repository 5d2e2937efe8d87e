-- wrk script: streamcap session starts, round-robin over fresh users' grants.
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/start.lua http://127.0.0.1:PORT -- GRANTS [count]
--
-- GRANTS has one line per fresh user, "path<TAB>Authorization value", as written by
--   streamcap-driver preload --sessions 0 --grants-out GRANTS --grants M
-- (the path is /v1/users/{user}/sessions, the value "Bearer <grant>"; limit 3).
-- Each request is a body-less POST that creates a session (201), so a run
-- adds sessions to the server. When a run sends more than M starts the list
-- wraps and a user starts a 2nd and 3rd session (still 201); a 4th would be
-- refused with 409, so give M >= starts / 3 (bench.sh writes a fresh file
-- per run).
--
-- Failures (409, 401, 503) are all >= 400: wrk's count of status > 399
-- ("Non-2xx or 3xx responses", summary.errors.status) is the exact number of
-- non-201 answers; done() prints it. "count" adds per-status counts through
-- a response() callback, which slows wrk; see heartbeat.lua.

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
      error("start.lua: cannot open grants file: " .. tostring(err))
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
      error("start.lua: no grants in " .. file)
   end
end

function init(args)
   local file = args[1] or os.getenv("GRANTS")
   if not file then
      error("start.lua: pass the grants file after --, e.g. -- grants.tsv")
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
   io.write(string.format("non-201 answers: %d\n", summary.errors.status))
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
      io.write("status counts: not collected (pass \"count\" after the grants file)\n")
   end
end
