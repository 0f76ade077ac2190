-- clock_test.lua: the TEST clock preamble (follows common.lua, precedes the rest).
--
-- Only `#[cfg(test)]` code assembles a script with this preamble; production builds do not
-- contain it. `clock()` returns the instant the test injects as ARGV[1] (us since the epoch),
-- so a test can replay any sequence of instants; nil (refused by the caller) when ARGV[1] is
-- not a decimal integer. `witness(n)` INCRs the key named by ARGV[4 + 6n] (right after the n
-- checks' arguments) and returns the new value: a sequence number that orders script runs for
-- tests. That key is not declared in KEYS, which only a standalone Redis tolerates: the
-- witness is test-only.

local function clock()
  return int(ARGV[1])
end

local function witness(n)
  local key = ARGV[4 + 6 * n]
  if key == nil then
    return nil
  end
  return redis.call('INCR', key)
end
