-- wrk script for keyledger's verification endpoints. Every request carries a
-- real key drawn at random from KEYS_FILE (one raw key per line, as written by
-- `keyledger bench seed --keys-out`). MODE=verify posts {"key": ...} to
-- /v1/keys/verify; MODE=auth sends `Authorization: Bearer <key>` to /v1/auth.
-- Requests are formatted once in init(), so a request costs one table index.
local path = os.getenv("KEYS_FILE") or "/tmp/keyledger-bench/keys.txt"
local mode = os.getenv("MODE") or "verify"
local reqs = {}
local n = 0

function init(args)
  for key in io.lines(path) do
    if #key > 0 then
      n = n + 1
      if mode == "auth" then
        reqs[n] = wrk.format("GET", "/v1/auth", { ["Authorization"] = "Bearer " .. key })
      else
        reqs[n] = wrk.format("POST", "/v1/keys/verify",
          { ["Content-Type"] = "application/json" }, '{"key":"' .. key .. '"}')
      end
    end
  end
  if n == 0 then error("no keys in " .. path) end
  math.randomseed(os.time())
end

function request()
  return reqs[math.random(n)]
end
