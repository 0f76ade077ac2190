-- clock_redis.lua: the production clock preamble (follows common.lua, precedes the rest).
--
-- `clock()` is Redis's own `TIME` in microseconds since the UNIX epoch, so every replica of
-- the service shares one clock: the server's. ARGV[1] is ignored. `witness()` does nothing:
-- production scripts write no key other than their counters.

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function witness(n)
  return nil
end
