-- sliding_window.lua: an exact sliding window, a log of admitted (instant, cost) pairs,
-- mirroring src/algorithm/sliding_window.rs line for line.
--
-- State: { t = {...}, c = {...}, first = i, last = j }: entries first..last, oldest first,
-- entry k admitted cost c[k] at instant t[k]. Entries at the same instant are merged, and
-- every entry holds a cost of at least 1, so a log holds at most `limit` live entries (plus,
-- until the next commit prunes them, entries that left the window). The empty state has no
-- entries (first > last). Pruning from the front only moves `first`.
--
-- In its Redis key: "sw:" followed by the entries, oldest first, as "t:c" joined by commas,
-- e.g. "sw:1764300000000000:1,1764300000250000:3", expiring (PXAT) at the newest entry's
-- instant + window, rounded up to the millisecond.

local function sliding_window_empty()
  return { t = {}, c = {}, first = 1, last = 0 }
end

-- Whether an entry at instant `t` is inside the window that ends at `now`: after the horizon
-- `now - window` (saturating), or any entry while `now < window`.
local function sliding_window_live(t, window, now)
  return t > sub0(now, window) or now < window
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
  local used = 0
  local newest = nil -- the newest live entry's instant
  for k = log.first, log.last do
    if sliding_window_live(log.t[k], window, now) then
      used = used + log.c[k]
      newest = log.t[k]
    end
  end
  local left = sub0(limit, used)
  if cost > limit then
    return false, left, sliding_window_reset(newest, window, now), RETRY_NEVER, 0
  end
  if cost <= left then
    local reset_newest = newest
    if cost > 0 then
      reset_newest = now
    end
    return true, left - cost, sliding_window_reset(reset_newest, window, now), RETRY_NOW, 0
  end
  -- Rejected: wait until enough of the oldest entries leave the window. `used` may exceed the
  -- limit (a config reload shrank it), so what must leave is everything above `limit - cost`.
  local need = used + cost - limit
  local retry = 0
  for k = log.first, log.last do
    if sliding_window_live(log.t[k], window, now) then
      retry = log.t[k] + window - now
      if log.c[k] >= need then
        break
      end
      need = need - log.c[k]
    end
  end
  return false, left, sliding_window_reset(newest, window, now), RETRY_AFTER, retry
end

-- Consumes `cost` at `now` (call only when sliding_window_check admitted it). Changes `log`
-- in place and returns it.
local function sliding_window_commit(log, limit, window, burst, now, cost)
  local horizon = sub0(now, window)
  if now >= window then
    while log.first <= log.last and log.t[log.first] <= horizon do
      log.t[log.first] = nil
      log.c[log.first] = nil
      log.first = log.first + 1
    end
  end
  if cost == 0 then
    return log
  end
  if log.first <= log.last and log.t[log.last] == now then
    log.c[log.last] = log.c[log.last] + cost
  else
    log.last = log.last + 1
    log.t[log.last] = now
    log.c[log.last] = cost
  end
  return log
end

-- The newest entry's instant + window; 0 for an empty log.
local function sliding_window_expires_at(log, limit, window, burst)
  if log.first > log.last then
    return 0
  end
  return log.t[log.last] + window
end

-- Undoes a commit of `cost` made at `committed_at`: takes `cost` off the (newest) entry at
-- that instant, dropping the entry when nothing is left of it. An entry already pruned has
-- left the window: nothing to undo. Changes `log` in place and returns it.
local function sliding_window_refund(log, limit, window, burst, committed_at, now, cost)
  for k = log.last, log.first, -1 do
    if log.t[k] == committed_at then
      local left = sub0(log.c[k], cost)
      if left > 0 then
        log.c[k] = left
        return log
      end
      for j = k, log.last - 1 do
        log.t[j] = log.t[j + 1]
        log.c[j] = log.c[j + 1]
      end
      log.t[log.last] = nil
      log.c[log.last] = nil
      log.last = log.last - 1
      return log
    end
  end
  return log
end

local function sliding_window_is_empty(log)
  return log.first > log.last
end

-- A key's value as a log, and whether it was one. Strict: "sw:" then "t:c" entries joined by
-- commas, each cost at least 1; anything else counts as the empty state.
local function sliding_window_decode(raw)
  local log = sliding_window_empty()
  if type(raw) ~= 'string' or string.sub(raw, 1, 3) ~= 'sw:' then
    return log, false
  end
  local pos, len = 4, #raw
  while pos <= len do
    local _, e, ts, cs = string.find(raw, '^(%d+):(%d+)', pos)
    local t, c = int(ts), int(cs)
    if t == nil or c == nil or c == 0 then
      return sliding_window_empty(), false
    end
    log.last = log.last + 1
    log.t[log.last] = t
    log.c[log.last] = c
    if e == len then
      break
    end
    if string.sub(raw, e + 1, e + 1) ~= ',' or e + 1 == len then
      return sliding_window_empty(), false
    end
    pos = e + 2
  end
  return log, true
end

local function sliding_window_encode(log)
  local parts = {}
  for k = log.first, log.last do
    parts[#parts + 1] = fmt(log.t[k]) .. ':' .. fmt(log.c[k])
  end
  return 'sw:' .. table.concat(parts, ',')
end
