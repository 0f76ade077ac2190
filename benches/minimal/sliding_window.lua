-- benches/minimal/sliding_window.lua: the yardstick of benches/script_cost.rs for the sliding
-- window, the smallest correct script for one pre-paid, enforced check with lua/decide.lua's
-- clock (Redis's TIME), value (the "sw2:" log of lua/sliding_window.lua: a base, then per
-- entry its instant and running total, 13 hex digits each) and expiry (PXAT at the newest
-- entry + window, rounded up to the millisecond). Not used by the service.
--
-- KEYS and ARGV as lua/decide.lua gets them for one check (only the quota and cost are read);
-- the reply has decide's shape, every field an integer.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local limit, window, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local MOD = 4503599627370496 -- 2^52: running totals wrap
local raw = redis.call('GET', KEYS[1]) or 'sw2:0000000000000'
local n = (#raw - 17) / 26

local function instant(i)
  local at = 26 * i - 8
  return tonumber(string.sub(raw, at, at + 12), 16)
end

local function total(i) -- total(0) is the base
  local at = 26 * i + 5
  return tonumber(string.sub(raw, at, at + 12), 16)
end

-- the first live entry: the first after now - window (binary search)
local lo, hi = 1, n
if now >= window then
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if instant(mid) > now - window then
      hi = mid - 1
    else
      lo = mid + 1
    end
  end
end
local first = lo
local before = total(first - 1)
local last, used, newest = before, 0, nil
if first <= n then
  last, newest = total(n), instant(n)
  used = (last - before) % MOD
end
local left = math.max(limit - used, 0)
local reset = newest and math.max(newest + window - now, 0) or 0
if cost > limit then
  return { 0, now, 0, left, reset, 2, 0 }
end
if used + cost > limit then
  -- the first live entry whose leaving makes room for cost
  lo, hi = first, n
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if (total(mid) - before) % MOD >= used + cost - limit then
      hi = mid - 1
    else
      lo = mid + 1
    end
  end
  return { 0, now, 0, left, reset, 1, instant(lo) + window - now }
end
if cost == 0 then
  return { 1, now, 1, left, reset, 0, 0 }
end
-- keep the live entries, then add (now, last + cost), merged into the newest at or after now
local kept = string.sub(raw, 26 * first - 8)
local at = now
if newest and newest >= now then
  at = newest
  kept = string.sub(kept, 1, -27)
end
redis.call('SET', KEYS[1],
  string.format('sw2:%013x', before) .. kept .. string.format('%013x%013x', at, (last + cost) % MOD),
  'PXAT', math.ceil((at + window) / 1000))
return { 1, now, 1, left - cost, at + window - now, 0, 0 }
