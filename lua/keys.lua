-- keys.lua: what decide.lua and refund.lua share (follows the three algorithm files):
-- the algorithms by name, reading and writing counter keys, parsing the checks' ARGV, and
-- the reservation records of cross-slot plans.

-- The algorithms by name, each one's functions made (by its *_module) the first time a run
-- needs them; nil for an unknown name.
local algorithms_made = {}
local function algorithm_named(name)
  local algorithm = algorithms_made[name]
  if algorithm == nil then
    if name == 'token_bucket' then
      algorithm = gcra_module()
    elseif name == 'sliding_window' then
      algorithm = sliding_window_module()
    elseif name == 'fixed_window' then
      algorithm = fixed_window_module()
    else
      return nil
    end
    algorithms_made[name] = algorithm
  end
  return algorithm
end

-- A key's value when it is a string; nil when the key is missing or holds another type
-- (pcall: a WRONGTYPE error must not abort the script, such a key counts as empty).
local function read_raw(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    return v
  end
  return nil
end

-- Stores an encoded state that equals the empty state from `expires_at` (us) on. One SET
-- replaces any value (of any type) and its expiry together: the key expires at `expires_at`
-- rounded up to the millisecond, so no key is immortal and none expires early. A state that
-- is already empty at `now` is deleted instead.
local function write_state(key, encoded, expires_at, now)
  if expires_at <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, encoded, 'PXAT', fmt(expiry_ms(expires_at)))
  end
end

-- The checks of ARGV (layout in decide.lua): a list of tables, or nil and why not.
local function parse_checks()
  local n = int(ARGV[2])
  if n == nil or (n ~= #KEYS and n + 1 ~= #KEYS) then
    return nil, 'ARGV[2] must be the number of KEYS, or one less'
  end
  if #ARGV < 3 + 6 * n then
    return nil, 'expected 6 ARGV per check after the first 3'
  end
  local checks = {}
  for i = 1, n do
    local at = 3 + 6 * (i - 1)
    local name = ARGV[at + 1]
    local algorithm = algorithm_named(name)
    if algorithm == nil then
      return nil, 'check ' .. i .. ': unknown algorithm'
    end
    local limit, window, burst, cost = int(ARGV[at + 2]), int(ARGV[at + 3]),
      int(ARGV[at + 4]), int(ARGV[at + 5])
    -- flags: bit 0 enforce, bit 1 post-paid ("0" and "1" keep their old meaning)
    local flags = ARGV[at + 6]
    if limit == nil or window == nil or burst == nil or cost == nil
      or (flags ~= '0' and flags ~= '1' and flags ~= '2' and flags ~= '3') then
      return nil, 'check ' .. i .. ': limit, window, burst and cost must be integers below '
        .. '2^53 and flags 0 to 3'
    end
    local why = quota_error(name, limit, window, burst)
    if why ~= nil then
      return nil, 'check ' .. i .. ': ' .. why
    end
    checks[i] = {
      key = KEYS[i],
      algorithm = algorithm,
      limit = limit,
      window = window,
      burst = burst,
      cost = cost,
      enforce = flags == '1' or flags == '3',
      post_paid = flags == '2' or flags == '3',
    }
  end
  return checks
end

-- A cross-slot plan reserves each slot under a reservation key of its own (random, in the
-- slot's hash tag), KEYS[n + 1]; a single-slot plan has none and never reaches this code.
-- The key records what happened to the reservation, for RESERVATION_TTL_MS:
--   'c' .. the decide reply, comma-separated: committed (the reply is replayed to a resent
--          decide, and tells a refund when it committed and which checks were allowed);
--   TOMBSTONE: refunded, or refunded before its decide ran (the decide then charges nothing).
-- A rejected decide commits nothing but its post-paid checks, and records its reply only when
-- it committed some (so a resent one replays it rather than charging them twice; a refund of
-- a rejected decide gives nothing back: post-paid charges are never refunded).
local RESERVATION_TTL_MS = 60000
local TOMBSTONE = 't'

-- The reservation key of a run over n checks, or nil when there is none.
local function reservation_of(n)
  if #KEYS == n + 1 then
    return KEYS[n + 1]
  end
  return nil
end

-- Records a committed decide's reply (numbers and decimal strings) under `reservation`.
local function record_commit(reservation, reply)
  local fields = {}
  for i = 1, #reply do
    fields[i] = type(reply[i]) == 'number' and fmt(reply[i]) or reply[i]
  end
  redis.call('SET', reservation, 'c' .. table.concat(fields, ','), 'PX', RESERVATION_TTL_MS)
end

-- The decide reply recorded in `recorded` for n checks, every field as a number (as decide
-- replies), or nil when it is not one.
local function recorded_reply(recorded, n)
  if recorded == nil or string.sub(recorded, 1, 1) ~= 'c' then
    return nil
  end
  local reply = {}
  for field in string.gmatch(string.sub(recorded, 2), '[^,]+') do
    local v = int(field)
    if v == nil then
      return nil
    end
    reply[#reply + 1] = v
  end
  if #reply ~= 2 + 5 * n then
    return nil
  end
  return reply
end
