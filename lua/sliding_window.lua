-- sliding_window.lua: an exact sliding window, a log of admitted (instant, cost) pairs,
-- mirroring src/algorithm/sliding_window.rs line for line.
--
-- Entries are kept oldest first with strictly increasing instants (a commit at or before the
-- newest entry's instant merges into it), each with a cost of at least 1, so admitted costs
-- make at most `limit` live entries (plus, until the next commit prunes them, entries that
-- left the window). Post-paid charges (debt) may take the live total past the limit, up to
-- USAGE_MAX; a commit that would make more than max(limit, SW_MAX_ENTRIES) entries first folds
-- the oldest entry into the next (drops its instant, keeps the base), as the Rust does. Instead of its cost, an entry stores the running total: the cost of every entry up
-- to it, added to the log's `base` (the running total before its first entry), modulo 2^52.
-- So what a range of entries admitted is a difference of two totals, and every question a
-- decision asks (where the window starts, how much is in it, which entry must leave before a
-- rejected cost fits) is a binary search over the log: O(log n) reads, never a scan.
--
-- In its Redis key: "sw2:", the base as 13 hex digits, then per entry its instant and its
-- running total as 13 hex digits each (26 characters an entry, no separators), e.g.
-- "sw2:0000000000000" .. "00644ef4c2f00" .. "0000000000003". The key expires (PXAT) at the
-- newest entry's instant + window, rounded up to the millisecond.
--
-- State: { raw = <the value read>, lo = i, hi = j, base = b, xt = {...}, xc = {...} }: the
-- log's entries are raw's entries lo..hi, then the extra entries xt[k], xc[k] a commit added
-- (instant, running total). Nothing but a refund decodes the whole value: a decision reads
-- O(log n) entries, and its write copies the kept part of `raw` once.
--
-- The functions are made by `sliding_window_module()`, which returns them by role, when a run first
-- decides a sliding window (keys.lua): the script body runs on every call, and a function
-- definition makes a closure each time it runs, so a run makes only what its checks use.

local function sliding_window_module()
  local SW_MOD = 4503599627370496 -- 2^52: running totals are kept modulo this
  local SW_HEADER = 17 -- #'sw2:' + 13
  local SW_ENTRY = 26
  local SW_MAX_ENTRIES = 500 -- sliding_window::MAX_LIMIT

  local function sw_hex(v)
    return string.format('%013x', v)
  end

  local function sw_add(a, b)
    local s = a + b
    if s >= SW_MOD then
      return s - SW_MOD
    end
    return s
  end

  local function sw_diff(a, b)
    local d = a - b
    if d < 0 then
      return d + SW_MOD
    end
    return d
  end

  local function sliding_window_empty()
    return { raw = '', lo = 1, hi = 0, base = 0, xt = {}, xc = {} }
  end

  local function sw_count(log)
    return log.hi - log.lo + 1 + #log.xt
  end

  -- Entry i (1 = the oldest): its instant and running total.
  local function sw_entry(log, i)
    local k = log.lo + i - 1
    if k > log.hi then
      local x = k - log.hi
      return log.xt[x], log.xc[x]
    end
    local at = SW_HEADER + SW_ENTRY * (k - 1) + 1
    return tonumber(string.sub(log.raw, at, at + 12), 16),
      tonumber(string.sub(log.raw, at + 13, at + 25), 16)
  end

  -- The running total before entry i.
  local function sw_total_before(log, i)
    if i == 1 then
      return log.base
    end
    local _, total = sw_entry(log, i - 1)
    return total
  end

  -- The first i in lo..hi for which `pred(i)` holds (pred is false, then true); hi + 1 if none.
  local function sw_search(lo, hi, pred)
    while lo <= hi do
      local mid = math.floor((lo + hi) / 2)
      if pred(mid) then
        hi = mid - 1
      else
        lo = mid + 1
      end
    end
    return lo
  end

  -- The first entry inside the window that ends at `now`: after the horizon `now - window`
  -- (saturating), or any entry while `now < window`. count + 1 when none is.
  local function sw_first_live(log, window, now)
    local n = sw_count(log)
    if now < window then
      return 1
    end
    local horizon = now - window
    return sw_search(1, n, function(i)
      local t = sw_entry(log, i)
      return t > horizon
    end)
  end

  -- The live entries' first index, their total cost, and the newest one's instant (or nil).
  local function sw_live(log, window, now)
    local first = sw_first_live(log, window, now)
    local n = sw_count(log)
    if first > n then
      return first, 0, nil
    end
    local newest, total = sw_entry(log, n)
    return first, sw_diff(total, sw_total_before(log, first)), newest
  end

  -- Time from `now` until an entry at `newest` leaves the window; 0 without one.
  local function sliding_window_reset(newest, window, now)
    if newest == nil then
      return 0
    end
    return sub0(newest + window, now)
  end

  -- allowed (boolean), remaining, reset_after, retry_kind, retry_after.
  local function sliding_window_check(log, limit, window, burst, now, cost)
    local first, used, newest = sw_live(log, window, now)
    local left = sub0(limit, used)
    if cost > limit then
      return false, left, sliding_window_reset(newest, window, now), RETRY_NEVER, 0
    end
    if used + cost <= limit then
      local reset_newest = newest
      if cost > 0 then
        -- the commit merges into the newest entry when the clock is not past it
        reset_newest = math.max(now, newest or now)
      end
      return true, left - cost, sliding_window_reset(reset_newest, window, now), RETRY_NOW, 0
    end
    -- Rejected: wait until enough of the oldest entries leave the window. `used` may exceed the
    -- limit (a config reload shrank it), so what must leave is everything above `limit - cost`:
    -- the first live entry whose running total (from the window's start) reaches `need`.
    local need = used + cost - limit
    local before = sw_total_before(log, first)
    local k = sw_search(first, sw_count(log), function(i)
      local _, total = sw_entry(log, i)
      return sw_diff(total, before) >= need
    end)
    local t = sw_entry(log, k)
    local retry = t + window - now
    return false, left, sliding_window_reset(newest, window, now), RETRY_AFTER, retry
  end

  -- Drops the entries before entry `first` (moving `base` to their total).
  local function sw_drop_before(log, first)
    if first > sw_count(log) then
      return sliding_window_empty()
    end
    log.base = sw_total_before(log, first)
    local drop = first - 1
    local from_raw = math.min(drop, log.hi - log.lo + 1)
    log.lo = log.lo + from_raw
    for _ = 1, drop - from_raw do
      table.remove(log.xt, 1)
      table.remove(log.xc, 1)
    end
    return log
  end

  -- Drops the oldest entry but keeps the base: its cost moves onto the next entry.
  local function sw_fold_oldest(log)
    if log.lo <= log.hi then
      log.lo = log.lo + 1
    else
      table.remove(log.xt, 1)
      table.remove(log.xc, 1)
    end
  end

  -- Consumes `cost` at `now`: when sliding_window_check admitted it, or whatever the verdict for
  -- a post-paid charge (debt: the live total up to USAGE_MAX, the log folded to at most
  -- max(limit, SW_MAX_ENTRIES) entries). Returns the new log (the old one may have changed).
  local function sliding_window_commit(log, limit, window, burst, now, cost)
    if now >= window then
      log = sw_drop_before(log, sw_first_live(log, window, now))
    end
    local n = sw_count(log)
    local used = 0
    if n > 0 then
      local _, last_total = sw_entry(log, n)
      used = sw_diff(last_total, log.base)
    end
    cost = math.min(cost, sub0(USAGE_MAX, used))
    if cost == 0 then
      return log
    end
    if n == 0 then
      log.xt[1] = now
      log.xc[1] = sw_add(log.base, cost)
      return log
    end
    local newest, total = sw_entry(log, n)
    if newest >= now then
      -- merge into the newest entry: take it out of `raw` if it is there
      if #log.xt == 0 then
        log.hi = log.hi - 1
        log.xt[1] = newest
        log.xc[1] = total
      end
      log.xc[#log.xc] = sw_add(total, cost)
    else
      while sw_count(log) >= math.max(limit, SW_MAX_ENTRIES) do
        sw_fold_oldest(log)
      end
      log.xt[#log.xt + 1] = now
      log.xc[#log.xc + 1] = sw_add(total, cost)
    end
    return log
  end

  -- The newest entry's instant + window; 0 for an empty log.
  local function sliding_window_expires_at(log, limit, window, burst)
    local n = sw_count(log)
    if n == 0 then
      return 0
    end
    local newest = sw_entry(log, n)
    return newest + window
  end

  -- The log with entries `ts[k]` of cost `cs[k]` (k = 1..#ts) on top of `base`.
  local function sw_from_costs(base, ts, cs)
    local log = sliding_window_empty()
    log.base = base
    local total = base
    for k = 1, #ts do
      total = sw_add(total, cs[k])
      log.xt[k] = ts[k]
      log.xc[k] = total
    end
    return log
  end

  -- Undoes a commit of `cost` made at `committed_at`: takes `cost` off the entry at that
  -- instant, dropping the entry when nothing is left of it. An entry already pruned has left
  -- the window: nothing to undo. Returns the new log. (Rewrites the whole log: refunds are rare,
  -- for plans across Redis Cluster slots, and the log is bounded by the capped limit.)
  local function sliding_window_refund(log, limit, window, burst, committed_at, now, cost)
    local ts, cs = {}, {}
    local previous = log.base
    for i = 1, sw_count(log) do
      local t, total = sw_entry(log, i)
      local c = sw_diff(total, previous)
      previous = total
      if t == committed_at then
        c = sub0(c, cost)
      end
      if c > 0 then
        ts[#ts + 1] = t
        cs[#cs + 1] = c
      end
    end
    return sw_from_costs(log.base, ts, cs)
  end

  local function sliding_window_is_empty(log)
    return sw_count(log) == 0
  end

  -- A key's value as a log, and whether it was one. "sw2:", a base, then whole entries whose
  -- first and last parse; anything else counts as the empty state. (Entries in between are read
  -- only when a search reaches them: checking them all would cost a scan per decision.)
  local function sliding_window_decode(raw)
    if type(raw) ~= 'string' or string.sub(raw, 1, 4) ~= 'sw2:' or #raw < SW_HEADER
      or (#raw - SW_HEADER) % SW_ENTRY ~= 0 then
      return sliding_window_empty(), false
    end
    local hex = '^%x%x%x%x%x%x%x%x%x%x%x%x%x'
    local n = (#raw - SW_HEADER) / SW_ENTRY
    local last = SW_HEADER + SW_ENTRY * (n - 1) + 1
    if string.find(raw, hex, 5) == nil or (n > 0 and (string.find(raw, hex, SW_HEADER + 1) == nil
        or string.find(raw, hex, last) == nil or string.find(raw, hex, last + 13) == nil)) then
      return sliding_window_empty(), false
    end
    local log = { raw = raw, lo = 1, hi = n, base = tonumber(string.sub(raw, 5, 17), 16),
      xt = {}, xc = {} }
    return log, true
  end

  local function sliding_window_encode(log)
    local parts = { 'sw2:', sw_hex(log.base) }
    if log.lo <= log.hi then
      parts[3] = string.sub(log.raw, SW_HEADER + SW_ENTRY * (log.lo - 1) + 1,
        SW_HEADER + SW_ENTRY * log.hi)
    end
    for k = 1, #log.xt do
      parts[#parts + 1] = sw_hex(log.xt[k]) .. sw_hex(log.xc[k])
    end
    return table.concat(parts)
  end

  return {
    check = sliding_window_check,
    commit = sliding_window_commit,
    refund = sliding_window_refund,
    expires_at = sliding_window_expires_at,
    is_empty = sliding_window_is_empty,
    decode = sliding_window_decode,
    encode = sliding_window_encode,
  }
end
