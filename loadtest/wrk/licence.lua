-- wrk script: licence requests (docs/spec.md §10) round-robin over the
-- sessions of a heartbeat targets file, each with a challenge body.
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/licence.lua http://127.0.0.1:PORT -- TARGETS [BYTES] [SYSTEM]
--
-- TARGETS is what `streamcap-driver preload --tokens-out` writes, one
-- "/v1/users/{user}/sessions/{id}/heartbeat<TAB>Bearer <lease token>" a
-- line; each becomes POST .../licence/SYSTEM (default clearkey) with the
-- same Authorization and a body of BYTES bytes (default 2048: a Widevine or
-- PlayReady challenge is one to a few KiB). Aimed at the licence server
-- itself (streamcap-driver upstream), the same requests measure calling the
-- upstream directly: it ignores the path and the token.
--
-- As in post.lua, every request is built once at init, failures are
-- wrk's count of status > 399, and done() prints it.

local requests = {}
local n = 0
local i = 0
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   local file = args[1] or os.getenv("TARGETS")
   if not file then
      error("licence.lua: pass the targets file after --, e.g. -- tokens.tsv")
   end
   local bytes = tonumber(args[2] or "2048")
   local system = args[3] or "clearkey"
   local body = string.rep("c", bytes)
   local head = " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\nAuthorization: "
   local tail = "\r\nContent-Length: " .. bytes .. "\r\n\r\n" .. body
   local f, err = io.open(file, "r")
   if not f then
      error("licence.lua: cannot open targets file: " .. tostring(err))
   end
   collectgarbage("stop")
   for line in f:lines() do
      local tab = string.find(line, "\t", 1, true)
      if tab and tab > 1 then
         local path = string.gsub(string.sub(line, 1, tab - 1), "/heartbeat$", "/licence/" .. system)
         local auth = string.gsub(string.sub(line, tab + 1), "\r$", "")
         n = n + 1
         requests[n] = "POST " .. path .. head .. auth .. tail
      end
   end
   f:close()
   collectgarbage("restart")
   if n == 0 then
      error("licence.lua: no targets in " .. file)
   end
   i = math.floor(n * (thread_index or 0) / 16) % n
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
end
