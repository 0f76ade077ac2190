-- gcra.lua: the token bucket as GCRA, mirroring src/algorithm/gcra.rs line for line.
--
-- State: the theoretical arrival time (TAT) in us since the epoch, 0 for a counter never hit.
-- In its Redis key: the TAT as a decimal string, e.g. "1764300000123456", expiring (PXAT) at
-- the TAT rounded up to the millisecond: from the TAT on, the state equals the empty state.
--
-- Every function takes (state, limit, window, burst, now, cost) like the Rust ones take
-- (state, quota, now, cost); all values are integers in the exact range of common.lua.
--
-- The functions are made by `gcra_module()`, which returns them by role, when a run first
-- decides a token bucket (keys.lua): the script body runs on every call, and a function
-- definition makes a closure each time it runs, so a run makes only what its checks use.

local function gcra_module()
  -- The emission interval: us one unit of cost is worth, ceil(window / limit), limit 0 as 1.
  local function gcra_interval(limit, window)
    return math.max(ceil_div(window, math.max(limit, 1)), 1)
  end

  -- The tolerance: how far ahead of `now` the TAT may run.
  local function gcra_tolerance(limit, window, burst)
    return gcra_interval(limit, window) * burst
  end

  -- What admitting `cost` at `now` would give, without changing anything:
  -- allowed (boolean), remaining, reset_after, retry_kind, retry_after.
  local function gcra_check(tat, limit, window, burst, now, cost)
    local t = gcra_interval(limit, window)
    local tau = gcra_tolerance(limit, window, burst)
    local base = math.max(tat, now)
    local ahead = base - now -- how far the bucket is from full, before this request
    if cost > burst then
      return false, idiv(tau - math.min(ahead, tau), t), ahead, RETRY_NEVER, 0
    end
    -- cost <= burst, so cost * t <= tau, and ahead <= USAGE_MAX: exact (Rust saturates; here it
    -- cannot matter)
    local new_ahead = ahead + cost * t
    -- A cost of 0 only looks: allowed unless the counter is in debt (ahead > tau).
    if new_ahead <= tau then
      return true, idiv(tau - math.min(new_ahead, tau), t), new_ahead, RETRY_NOW, 0
    end
    return false, idiv(tau - math.min(ahead, tau), t), ahead, RETRY_AFTER, new_ahead - tau
  end

  -- The state after consuming `cost` at `now`: when gcra_check admitted it, or whatever the
  -- verdict for a post-paid charge (the TAT past the tolerance: debt), never more than USAGE_MAX
  -- ahead of `now`. (cost * t may be inexact when huge, but then it exceeds `room`, which is.)
  local function gcra_commit(tat, limit, window, burst, now, cost)
    local t = gcra_interval(limit, window)
    local base = math.max(tat, now)
    local room = sub0(USAGE_MAX, base - now)
    return base + math.min(cost * t, room)
  end

  -- The instant from which the state equals the empty state (CounterState::expires_at).
  local function gcra_expires_at(tat, limit, window, burst)
    return tat
  end

  -- Undoes a commit of `cost` made at `committed_at`, as seen at `now`: the TAT goes back by
  -- cost * T, but never before `now` (a TAT in the past is a full bucket anyway).
  local function gcra_refund(tat, limit, window, burst, committed_at, now, cost)
    local t = gcra_interval(limit, window)
    return math.max(now, sub0(tat, cost * t))
  end

  -- Whether the state is the empty state's own value (nothing to keep).
  local function gcra_is_empty(tat)
    return tat == 0
  end

  -- A key's value as a GCRA state. Returns the state and whether the value was one (anything
  -- else: a missing key, another algorithm's state, garbage, counts as the empty state).
  local function gcra_decode(raw)
    local tat = int(raw)
    if tat == nil then
      return 0, false
    end
    return tat, true
  end

  local function gcra_encode(tat)
    return fmt(tat)
  end

  return {
    check = gcra_check,
    commit = gcra_commit,
    refund = gcra_refund,
    expires_at = gcra_expires_at,
    is_empty = gcra_is_empty,
    decode = gcra_decode,
    encode = gcra_encode,
  }
end
