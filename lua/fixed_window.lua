-- fixed_window.lua: windows aligned to multiples of their length since the UNIX epoch,
-- mirroring src/algorithm/fixed_window.rs line for line.
--
-- State: { start = <start of the window, us>, count = <cost admitted in it> }; the empty state
-- is { start = 0, count = 0 }. In its Redis key: "start:count" in decimal, e.g.
-- "1764300000000000:7", expiring (PXAT) at start + window rounded up to the millisecond.
--
-- The functions are made by `fixed_window_module()`, which returns them by role, when a run first
-- decides a fixed window (keys.lua): the script body runs on every call, and a function
-- definition makes a closure each time it runs, so a run makes only what its checks use.

local function fixed_window_module()
  -- The start of the window that contains `now` (now - now % max(window, 1)).
  local function fixed_window_start(window, now)
    local w = math.max(window, 1)
    return idiv(now, w) * w
  end

  -- The current window's start, and what the state admitted in it.
  local function fixed_window_count_at(state, window, now)
    local start = fixed_window_start(window, now)
    local count = 0
    if state.start == start then
      count = state.count
    end
    return start, count
  end

  -- allowed (boolean), remaining, reset_after, retry_kind, retry_after.
  local function fixed_window_check(state, limit, window, burst, now, cost)
    local start, count = fixed_window_count_at(state, window, now)
    local until_next = start + window - now
    local left = sub0(limit, count)
    if cost > limit then
      return false, left, until_next, RETRY_NEVER, 0
    end
    if count + cost <= limit then
      return true, left - cost, until_next, RETRY_NOW, 0
    end
    return false, left, until_next, RETRY_AFTER, until_next
  end

  -- The state after consuming `cost` at `now`: when fixed_window_check admitted it, or
  -- whatever the verdict for a post-paid charge (the count past the limit: debt), up to
  -- USAGE_MAX.
  local function fixed_window_commit(state, limit, window, burst, now, cost)
    local start, count = fixed_window_count_at(state, window, now)
    return { start = start, count = math.min(count + cost, math.max(count, USAGE_MAX)) }
  end

  local function fixed_window_expires_at(state, limit, window, burst)
    return state.start + window
  end

  -- Undoes a commit of `cost` made at `committed_at`: only while the counter is still in the
  -- window that commit counted in, and never below 0.
  local function fixed_window_refund(state, limit, window, burst, committed_at, now, cost)
    if state.start == fixed_window_start(window, committed_at) then
      return { start = state.start, count = sub0(state.count, cost) }
    end
    return state
  end

  local function fixed_window_is_empty(state)
    return state.count == 0
  end

  -- A key's value as a fixed-window state, and whether it was one.
  local function fixed_window_decode(raw)
    if type(raw) == 'string' then
      local s, c = string.match(raw, '^(%d+):(%d+)$')
      local start, count = s and digits(s), c and digits(c)
      if start ~= nil and count ~= nil then
        return { start = start, count = count }, true
      end
    end
    return { start = 0, count = 0 }, false
  end

  local function fixed_window_encode(state)
    return string.format('%d:%d', state.start, state.count)
  end

  return {
    check = fixed_window_check,
    commit = fixed_window_commit,
    refund = fixed_window_refund,
    expires_at = fixed_window_expires_at,
    is_empty = fixed_window_is_empty,
    decode = fixed_window_decode,
    encode = fixed_window_encode,
  }
end
