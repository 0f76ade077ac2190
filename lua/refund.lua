-- refund.lua: undoes what decide.lua committed for some checks.
--
-- Used when one request's plan spans Redis Cluster slots: each slot's part is decided by its
-- own decide.lua run, and when a later part is rejected the earlier, admitted parts are
-- refunded. The script Redis runs is common.lua, clock_redis.lua, the three algorithm files,
-- keys.lua and this file, concatenated (src/store/redis/script.rs); `now` is Redis's TIME.
--
-- KEYS[i]  the counter key of check i, i = 1..n, as given to decide.lua.
-- KEYS[n + 1]  optional: the reservation key the decide ran under (keys.lua). Then what is
--          refunded comes from the reservation's record, not from ARGV: nothing unless it
--          committed (and then committed_at and which checks were allowed are the recorded
--          ones; ARGV's costs are the checks' full costs), and the reservation becomes a
--          tombstone, so a second refund, or a decide that comes later, does nothing.
-- ARGV[1]  committed_at: the `now` decide.lua returned for that commit (us); ignored with a
--          reservation key.
-- ARGV[2]  n (= #KEYS).
-- ARGV[3]  reserved, "1" (the commit flag's place in decide.lua's layout).
-- ARGV[4 + 6(i-1) .. 9 + 6(i-1)]  check i, as for decide.lua, where cost is what decide.lua
--          committed for it: its cost if it was allowed, 0 if it was not (nothing to undo).
--          A post-paid check (flags bit 1) is never refunded: that usage happened.
--          With a reservation whose decide was rejected, nothing is refunded (it committed
--          only post-paid checks).
--
-- Per pre-paid check with cost > 0, when the key still holds that algorithm's state:
--   token bucket: tat = max(now, tat - cost * T);
--   fixed window: count = max(0, count - cost), only while still in committed_at's window;
--   sliding window: cost is taken off the entry at committed_at (dropped when it reaches 0).
-- The key is rewritten with the expiry of its new state, or deleted when that state is
-- empty. A key that another algorithm rewrote in between (a config reload) is left alone.
--
-- Reply: the integer 1, or 0 when a reservation had nothing to refund. Errors: as decide.lua (nothing written).
-- Atomic for the same reason as decide.lua: Redis runs the whole script alone. A refund is
-- approximate only in that other requests may have been decided against the refunded cost
-- in the meantime (they saw less room than there was, never more).

local committed_at = int(ARGV[1])
if committed_at == nil or committed_at > NOW_MAX then
  return redis.error_reply('ERR ratelimiter: ARGV[1] must be the commit instant in us')
end
local now = clock()
local checks, why = parse_checks()
if checks == nil then
  return redis.error_reply('ERR ratelimiter: ' .. why)
end

local reservation = reservation_of(#checks)
if reservation ~= nil then
  local recorded = recorded_reply(read_raw(reservation), #checks)
  redis.call('SET', reservation, TOMBSTONE, 'PX', RESERVATION_TTL_MS)
  if recorded == nil then
    return 0
  end
  committed_at = recorded[2]
  if committed_at == nil or committed_at > NOW_MAX or recorded[1] ~= 1 then
    return 0
  end
  for i = 1, #checks do
    if recorded[2 + 5 * (i - 1) + 1] ~= 1 then
      checks[i].cost = 0
    end
  end
end

for i = 1, #checks do
  local c = checks[i]
  if c.cost > 0 and not c.post_paid then
    local state, ours = c.algorithm.decode(read_raw(c.key))
    if ours then
      state = c.algorithm.refund(state, c.limit, c.window, c.burst, committed_at, now, c.cost)
      if c.algorithm.is_empty(state) then
        redis.call('DEL', c.key)
      else
        write_state(c.key, c.algorithm.encode(state),
          c.algorithm.expires_at(state, c.limit, c.window, c.burst), now)
      end
    end
  end
end
return 1
