-- benches/minimal/fixed_window.lua: the yardstick of benches/script_cost.rs for fixed windows,
-- the smallest correct script for one pre-paid, enforced check with lua/decide.lua's clock
-- (Redis's TIME), value ("start:count") and expiry (PXAT at the window's end, rounded up to
-- the millisecond). Not used by the service.
--
-- KEYS and ARGV as lua/decide.lua gets them for one check (only the quota and cost are read);
-- the reply has decide's shape, every field an integer.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local limit, window, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local start = now - math.fmod(now, math.max(window, 1))
local count = 0
local raw = redis.call('GET', KEYS[1])
if raw then
  local s, c = string.match(raw, '^(%d+):(%d+)$')
  if tonumber(s) == start then
    count = tonumber(c)
  end
end
local until_next = start + window - now
local left = math.max(limit - count, 0)
if cost > limit then
  return { 0, now, 0, left, until_next, 2, 0 }
end
if count + cost > limit then
  return { 0, now, 0, left, until_next, 1, until_next }
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f:%.0f', start, count + cost),
    'PXAT', math.ceil((start + window) / 1000))
end
return { 1, now, 1, left - cost, until_next, 0, 0 }
