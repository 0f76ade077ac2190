-- benches/minimal/token_bucket.lua: the yardstick of benches/script_cost.rs for the token
-- bucket (GCRA), the smallest correct script for one pre-paid, enforced check with
-- lua/decide.lua's clock (Redis's TIME), value (the TAT in us, decimal) and expiry (PXAT at the
-- TAT, rounded up to the millisecond). Not used by the service.
--
-- KEYS and ARGV as lua/decide.lua gets them for one check (only the quota and cost are read);
-- the reply has decide's shape, every field an integer.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local limit, window, burst, cost =
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local interval = math.max(math.ceil(window / math.max(limit, 1)), 1)
local tau = interval * burst
local ahead = math.max((tonumber(redis.call('GET', KEYS[1])) or 0) - now, 0)
local left = math.floor((tau - math.min(ahead, tau)) / interval)
if cost > burst then
  return { 0, now, 0, left, ahead, 2, 0 }
end
local new_ahead = ahead + cost * interval
if new_ahead > tau then
  return { 0, now, 0, left, ahead, 1, new_ahead - tau }
end
if cost > 0 then
  local tat = now + new_ahead
  redis.call('SET', KEYS[1], tat, 'PXAT', math.ceil(tat / 1000))
end
return { 1, now, 1, math.floor((tau - new_ahead) / interval), new_ahead, 0, 0 }
