-- common.lua: integer helpers shared by every script (always the first part of a script).
--
-- Redis runs Lua 5.1, whose only number type is a double. Doubles hold integers exactly below
-- 2^53, so every value these scripts handle is kept far below that: instants below 2^52 us
-- (the year 2112), quota figures (limit, window, burst) at most 2^50, and the token bucket's
-- tolerance (interval * burst) at most 2^51, and what a counter records, debt included, at
-- most USAGE_MAX = 2^51 (units for the windows, us ahead of now for the token bucket; Rust's
-- `algorithm::USAGE_MAX`). Sums and products of such values stay exact.
-- `quota_error` refuses anything outside that range instead of computing a wrong answer; the
-- Rust side (`script::within_exact_range`) applies the same bounds.
--
-- Numbers leave a script as integer replies (a Lua number returned to Redis becomes an integer
-- reply, exact for these integers). Numbers written to keys, or passed to redis.call, are
-- decimal strings made by `fmt`: `tostring` prints only 14 significant digits, and Redis
-- 7.2.0-7.2.4 turn a Lua number argument such as 1e9 into "1e+09".

local NOW_MAX = 4503599627370496 -- 2^52
local QUOTA_MAX = 1125899906842624 -- 2^50
local SPAN_MAX = 2251799813685248 -- 2^51
local USAGE_MAX = 2251799813685248 -- 2^51: the most a counter records (post-paid debt)
local INT_MAX = 9007199254740991 -- 2^53 - 1, the largest integer `int` accepts

-- retry_kind values, as in the Rust `RetryAfter`
local RETRY_NOW = 0
local RETRY_AFTER = 1
local RETRY_NEVER = 2

-- A string of decimal digits (checked by the caller) as an integer; nil past 16 digits or
-- 2^53 - 1.
local function digits(s)
  if #s > 16 then
    return nil
  end
  local v = tonumber(s)
  if v > INT_MAX then
    return nil
  end
  return v
end

-- A decimal string of at most 16 digits below 2^53 as an integer; nil for anything else.
local function int(s)
  if type(s) ~= 'string' or #s == 0 or #s > 16 or string.find(s, '^%d+$') == nil then
    return nil
  end
  return digits(s)
end

-- An integer as a decimal string, every digit exact ('%d' converts to a 64-bit C long: exact
-- below 2^53, and cheaper than '%.0f').
local function fmt(v)
  return string.format('%d', v)
end

-- floor(a / b) for integers 0 <= a, 1 <= b (exact below 2^53): the division of doubles may
-- round its quotient across an integer, so the result is corrected by one either way.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- ceil(a / b), like Rust's `u64::div_ceil`.
local function ceil_div(a, b)
  local q = idiv(a, b)
  if q * b < a then
    q = q + 1
  end
  return q
end

-- `a - b` saturating at 0, like Rust's `u64::saturating_sub`.
local function sub0(a, b)
  if a > b then
    return a - b
  end
  return 0
end

-- The millisecond at which a key whose state is empty from `expires_at` (us) may expire:
-- rounded up, so a key never expires before its state is empty.
local function expiry_ms(expires_at)
  return ceil_div(expires_at, 1000)
end

-- Why a check's figures cannot be computed exactly, or nil when they can.
local function quota_error(algorithm, limit, window, burst)
  if limit > QUOTA_MAX or window > QUOTA_MAX or burst > QUOTA_MAX then
    return 'limit, window and burst must be at most 2^50'
  end
  if algorithm == 'token_bucket' then
    -- the same interval as gcra_interval, which is defined later
    local t = math.max(ceil_div(window, math.max(limit, 1)), 1)
    if t * burst > SPAN_MAX then
      return 'the token bucket tolerance (interval * burst) must be at most 2^51 us'
    end
  end
  return nil
end
