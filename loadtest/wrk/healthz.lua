-- wrk script: GET /healthz through a request() callback, as post.lua issues
-- its requests, so the trivial-route baseline pays the same
-- load-generator cost per request (wrk's Lua mode costs it 5-10% on this
-- route compared with its static request).
--
--   wrk -t1 -c64 -d10s -s loadtest/wrk/healthz.lua http://127.0.0.1:ADMIN_PORT

local req

function init(args)
   req = wrk.format("GET", "/healthz")
end

function request()
   return req
end
