-- decide.lua: decides one plan (one request's checks) all-or-nothing.
--
-- The script Redis runs is common.lua, a clock preamble (clock_redis.lua in production,
-- clock_test.lua in tests only), gcra.lua, sliding_window.lua, fixed_window.lua, keys.lua and
-- this file, concatenated (src/store/redis/script.rs).
--
-- KEYS[i]  the counter key of check i, i = 1..n (`script::counter_key`).
-- KEYS[n + 1]  cross-slot plans only: the slot's reservation key (keys.lua). A decide under a
--          reservation that committed already replays its recorded reply and charges
--          nothing again; under a refunded one it charges nothing and answers the error
--          "ERR ratelimiter: reservation already refunded"; otherwise it runs as below and,
--          when it commits, records its reply there.
-- ARGV[1]  the test clock in us; ignored in production, where `now` is Redis's TIME.
-- ARGV[2]  n, the number of checks (= #KEYS).
-- ARGV[3]  "1": commit when admitted (what the service always sends); "0": decide only,
--          write nothing.
-- ARGV[4 + 6(i-1) .. 9 + 6(i-1)]  check i: algorithm ("token_bucket" | "sliding_window" |
--          "fixed_window"), limit, window (us), burst, cost, flags ("0" to "3"): bit 0 enforce
--          (a shadow check, without it, is decided and reported but never rejects the plan),
--          bit 1 post-paid (usage that already happened: committed whatever the verdict, into
--          debt; its verdict says whether it fit). Integers in decimal, within the exact range
--          of common.lua.
-- ARGV[4 + 6n]  test variant only: the name of the witness key (see clock_test.lua).
--
-- Reply: a flat array of integers (a replayed reservation: the same, read from its record)
--   [1] admitted (1/0), [2] now (us),
--   then per check i, at 2 + 5(i-1) + 1..5: allowed (1/0), remaining,
--   reset_after (us), retry_kind (0 now, 1 after, 2 never),
--   retry_after (us; 0 unless retry_kind is 1),
--   and in the test variant only one more element: the witness's sequence number (integer).
-- Errors: a malformed ARGV, or a figure outside the exact range, is an error reply
-- ("ERR ratelimiter: ...") and writes nothing.
--
-- Behaviour, as MemoryStore::decide (src/store/plan.rs): every check is decided against its
-- key's current state (a missing key, another algorithm's state or an unparsable value is the
-- empty state); the plan is admitted when every enforced check is allowed; then every check
-- with a cost above 0 that is post-paid, or allowed in an admitted plan, is committed. A plan
-- that is not admitted writes nothing but its post-paid checks. Each written key expires
-- (PXAT) when its state becomes empty again, rounded up to the millisecond.
--
-- Atomic because Redis runs a script to its end with no other command in between: every check
-- sees the same `now` and the same states, and the writes happen together or not at all. (A
-- script that raises an error after a write would keep that write, which is why everything
-- that can fail - ARGV parsing, the range checks - happens before the first write.)

local now = clock()
if now == nil or now > NOW_MAX then
  return redis.error_reply('ERR ratelimiter: the clock must be an integer of us below 2^52')
end
local checks, why = parse_checks()
if checks == nil then
  return redis.error_reply('ERR ratelimiter: ' .. why)
end
local n = #checks
local commit = ARGV[3] ~= '0'
local reservation = reservation_of(n)
if reservation ~= nil then
  local recorded = read_raw(reservation)
  if recorded == TOMBSTONE then
    return redis.error_reply('ERR ratelimiter: reservation already refunded')
  end
  local replay = recorded_reply(recorded, n)
  if replay ~= nil then
    return replay
  end
end

local admitted = true
local reply = { 0, now }
for i = 1, n do
  local c = checks[i]
  c.state = c.algorithm.decode(read_raw(c.key))
  local allowed, remaining, reset_after, retry_kind, retry_after =
    c.algorithm.check(c.state, c.limit, c.window, c.burst, now, c.cost)
  c.allowed = allowed
  if c.enforce and not allowed then
    admitted = false
  end
  local at = 2 + 5 * (i - 1)
  reply[at + 1] = allowed and 1 or 0
  reply[at + 2] = remaining
  reply[at + 3] = reset_after
  reply[at + 4] = retry_kind
  reply[at + 5] = retry_after
end

if admitted then
  reply[1] = 1
end
if commit then
  -- The limiter merges checks on one counter, but if a key came twice its second commit
  -- applies on top of the first, as in the memory store.
  local written = {}
  local committed = false
  for i = 1, n do
    local c = checks[i]
    if c.cost > 0 and (c.post_paid or (admitted and c.allowed)) then
      local state = c.state
      if written[c.key] ~= nil then
        state = c.algorithm.decode(written[c.key])
      end
      state = c.algorithm.commit(state, c.limit, c.window, c.burst, now, c.cost)
      local encoded = c.algorithm.encode(state)
      write_state(c.key, encoded, c.algorithm.expires_at(state, c.limit, c.window, c.burst), now)
      written[c.key] = encoded
      committed = true
      if c.post_paid then
        -- Recorded: its figures become what a check-only sees now (plan::settle).
        local _, remaining, reset_after, retry_kind, retry_after =
          c.algorithm.check(state, c.limit, c.window, c.burst, now, 0)
        local at = 2 + 5 * (i - 1)
        reply[at + 2] = remaining
        reply[at + 3] = reset_after
        reply[at + 4] = retry_kind
        reply[at + 5] = retry_after
      end
    end
  end
  if reservation ~= nil and (admitted or committed) then
    record_commit(reservation, reply)
  end
end

local seq = witness(n)
if seq ~= nil then
  reply[#reply + 1] = seq
end
return reply
