//! The Redis Lua scripts that decide and refund plans, and how to call them.
//!
//! The scripts live in `lua/` at the crate root, one file per concern, and are assembled here
//! with `concat!(include_str!(..))` into two production scripts:
//!
//! - **decide**: `common.lua`, `clock_redis.lua`, `gcra.lua`, `sliding_window.lua`,
//!   `fixed_window.lua`, `keys.lua`, `decide.lua`. Decides one plan all-or-nothing against
//!   Redis's own `TIME`, exactly as [`MemoryStore`](crate::store::MemoryStore) does against its
//!   clock: the algorithm files mirror `crate::algorithm` line for line, in integer
//!   microseconds.
//! - **refund**: the same with `refund.lua`: undoes a decide's commit, for plans that span
//!   Redis Cluster slots when a later slot rejects, fails or times out.
//!
//! A cross-slot plan's slots are decided and refunded under a reservation key each
//! ([`reservation_key`], [`reserve_invocation`], [`refund_reservation_invocation`]): one more
//! `KEYS` entry, in the slot's hash tag, recording for a minute what the decide committed, so a
//! resent decide or refund charges or gives back once. Single-slot plans never carry one.
//!
//! A third, test-only variant of decide swaps `clock_redis.lua` for `clock_test.lua`, which
//! reads `now` from `ARGV[1]` and returns a sequence number from a witness key. It exists only
//! under `#[cfg(test)]`, so a production build cannot reach the injectable clock.
//!
//! # Layout
//!
//! `KEYS[i]` is check `i`'s [`counter_key`]. `ARGV` is: the test clock (ignored in production),
//! the number of checks `n`, the commit flag (`"1"`), then six values per check: algorithm,
//! limit, window (µs), burst, cost, flags (`"0"` to `"3"`: bit 0 enforce, bit 1 post-paid, so
//! `"1"`/`"0"` still mean enforced/shadow); the test variant adds the witness
//! key's name. decide replies with a flat array of integers ([`decode`] also takes decimal
//! strings, what earlier versions of the script sent): admitted, `now`, then per check
//! allowed, remaining, reset_after, retry kind (0 now, 1 after, 2 never), retry_after, plus the
//! witness's sequence number in the test variant; [`decode`] reads it. The headers of `lua/decide.lua` and `lua/refund.lua` say more.
//!
//! # Exact range
//!
//! Lua 5.1 numbers are doubles, exact for integers below 2^53. The scripts refuse (with an
//! error reply) a check whose figures could leave that range; [`within_exact_range`] tells
//! beforehand. Costs are clamped to [`COST_CAP`] on the way in, which changes no verdict (any
//! cost above the limit and burst is refused the same way) and no post-paid charge (any cost
//! of at least [`USAGE_MAX`] records the same debt, the most a counter holds).

use std::sync::LazyLock;

use ::redis::{Cmd, RedisWrite, Script, ScriptInvocation, Value};

use crate::algorithm::{Algorithm, Micros, RetryAfter, USAGE_MAX, Verdict, gcra};
use crate::store::{Check, CounterKey, StoreError};

/// The largest limit, window (µs) or burst the scripts accept: 2^50.
pub const QUOTA_MAX: u64 = 1 << 50;
/// The largest token-bucket tolerance (`interval * burst`, µs) the scripts accept: 2^51.
pub const SPAN_MAX: u64 = 1 << 51;
/// The latest instant (µs since the epoch) the scripts accept: 2^52, in the year 2112.
pub const NOW_MAX: u64 = 1 << 52;
/// Costs are sent as `min(cost, COST_CAP)`: above every accepted limit and burst, so a capped
/// cost gets the same verdict as the real one, and at least [`USAGE_MAX`], so a capped
/// post-paid charge records the same debt (any cost of at least `USAGE_MAX` saturates).
pub const COST_CAP: u64 = USAGE_MAX;
const _: () = assert!(COST_CAP > QUOTA_MAX);

macro_rules! lua {
    ($file:literal) => {
        include_str!(concat!("../../../lua/", $file))
    };
}

/// One script's source: the shared functions, a clock, the algorithms, the key layout, then
/// the script's own body.
macro_rules! script_source {
    ($clock:literal, $body:literal) => {
        concat!(
            lua!("common.lua"),
            lua!($clock),
            lua!("gcra.lua"),
            lua!("sliding_window.lua"),
            lua!("fixed_window.lua"),
            lua!("keys.lua"),
            lua!($body),
        )
    };
}

/// The production decide script's source.
const DECIDE_LUA: &str = script_source!("clock_redis.lua", "decide.lua");

/// The refund script's source (production clock: refunds clamp to Redis's `TIME`).
const REFUND_LUA: &str = script_source!("clock_redis.lua", "refund.lua");

/// The test decide script's source: the clock is `ARGV[1]`, and a witness counts runs.
#[cfg(test)]
const DECIDE_TEST_CLOCK_LUA: &str = script_source!("clock_test.lua", "decide.lua");

static DECIDE: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE_LUA));
static RESET: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("reset.lua")));
static REFUND: LazyLock<Script> = LazyLock::new(|| Script::new(REFUND_LUA));
#[cfg(test)]
static DECIDE_TEST_CLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE_TEST_CLOCK_LUA));

/// The production decide script: `now` is Redis's `TIME`.
pub fn decide_script() -> &'static Script {
    &DECIDE
}

/// The refund script (see `lua/refund.lua`).
pub fn refund_script() -> &'static Script {
    &REFUND
}

/// decide with the clock injected as `ARGV[1]` and a sequence-number witness. Tests only.
#[cfg(test)]
pub fn decide_script_test_clock() -> &'static Script {
    &DECIDE_TEST_CLOCK
}

/// Deletes the counters `keys` name (one hash tag: one slot); replies how many existed.
pub fn reset_invocation(prefix: &str, keys: &[CounterKey]) -> ScriptInvocation<'static> {
    let mut inv = RESET.prepare_invoke();
    for key in keys {
        inv.key(counter_key(prefix, key));
    }
    inv
}

/// The Redis key of a counter: `{prefix}{<tag, 32 hex>}:<limit, 16 hex>`.
///
/// The braces make the tag the Redis Cluster hash tag, so every limit of one descriptor lands
/// in one slot and a plan over them is one script run.
pub fn counter_key(prefix: &str, key: &CounterKey) -> String {
    let mut name = Vec::with_capacity(prefix.len() + 51);
    // A Vec never refuses a write; the name is the prefix and ASCII, so valid UTF-8.
    let _ = write_counter_key(&mut name, prefix, key);
    String::from_utf8(name).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`counter_key`]'s bytes (the one place its layout is written) into `out`, e.g. a command's
/// buffer: no `String`, and hex digits without the formatting machinery (`{:032x}` of a u128
/// costs more than the rest of the command).
fn write_counter_key(
    out: &mut impl std::io::Write,
    prefix: &str,
    key: &CounterKey,
) -> std::io::Result<()> {
    let mut tag = [0u8; 32];
    let mut limit = [0u8; 16];
    // Cannot fail: each buffer holds two hex digits per byte.
    let _ = hex::encode_to_slice(key.tag.to_be_bytes(), &mut tag);
    let _ = hex::encode_to_slice(key.limit.to_be_bytes(), &mut limit);
    out.write_all(prefix.as_bytes())?;
    out.write_all(b"{")?;
    out.write_all(&tag)?;
    out.write_all(b"}:")?;
    out.write_all(&limit)
}

/// The test variant's witness key (not a counter: no hash tag, no expiry).
fn witness_key(prefix: &str) -> String {
    format!("{prefix}witness")
}

/// Whether the scripts can decide `check` exactly (otherwise they refuse it with an error):
/// limit, window and burst at most [`QUOTA_MAX`], and for a token bucket a tolerance of at most
/// [`SPAN_MAX`]. Costs never matter (they are capped), nor does `now` before 2112.
pub fn within_exact_range(check: &Check) -> bool {
    let q = &check.quota;
    if q.limit > QUOTA_MAX || q.window > QUOTA_MAX || q.burst > QUOTA_MAX {
        return false;
    }
    check.algorithm != Algorithm::TokenBucket || gcra::tolerance(q) <= SPAN_MAX
}

/// A check's flags argument: bit 0 enforce, bit 1 post-paid.
fn flags(check: &Check) -> &'static str {
    match (check.post_paid, check.enforce) {
        (false, false) => "0",
        (false, true) => "1",
        (true, false) => "2",
        (true, true) => "3",
    }
}

/// One check's six `ARGV` values, with `cost` in place of its own.
fn check_args(check: &Check, cost: u64) -> (&'static str, u64, u64, u64, u64, &'static str) {
    let q = &check.quota;
    let algorithm = check.algorithm.as_str();
    (
        algorithm,
        q.limit,
        q.window,
        q.burst,
        cost.min(COST_CAP),
        flags(check),
    )
}

/// Appends one check's six `ARGV` values, with `cost` in place of its own.
fn push_check(inv: &mut ScriptInvocation<'_>, check: &Check, cost: u64) {
    inv.arg(check_args(check, cost));
}

/// The production decide script's `EVALSHA` over `checks` (one plan; keys distinct, all in
/// one Cluster slot): the command [`decide_invocation`] sends with no test clock, byte for
/// byte, written straight into the command's buffer (no `String` per key, no `Vec` per
/// argument). It does not load the script: the caller answers `NOSCRIPT`.
pub fn decide_cmd(prefix: &str, checks: &[Check]) -> Cmd {
    let n = checks.len();
    // 3 + n + 3 + 6n arguments; about 51 + prefix bytes per key, 60 per check's values.
    let mut cmd = Cmd::with_capacity(6 + 7 * n, 64 + (prefix.len() + 111) * n);
    cmd.arg("EVALSHA").arg(DECIDE.get_hash()).arg(n);
    for check in checks {
        // A command's buffer never refuses a write.
        let _ = write_counter_key(&mut cmd.writer_for_next_arg(), prefix, &check.key);
    }
    cmd.arg(0u64).arg(n).arg("1");
    for check in checks {
        cmd.arg(check_args(check, check.cost));
    }
    cmd
}

/// A decide run of `script` over `checks` (one plan; keys distinct, all in one Cluster slot).
///
/// `test_now` goes to `ARGV[1]` (production ignores it: pass `None`) and, when given, the
/// witness key's name goes after the checks for the test variant.
pub fn decide_invocation<'a>(
    script: &'a Script,
    prefix: &str,
    checks: &[Check],
    test_now: Option<Micros>,
) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for check in checks {
        inv.key(counter_key(prefix, &check.key));
    }
    inv.arg(test_now.unwrap_or(0)).arg(checks.len()).arg("1");
    for check in checks {
        push_check(&mut inv, check, check.cost);
    }
    if test_now.is_some() {
        inv.arg(witness_key(prefix));
    }
    inv
}

/// A refund run undoing what a decide run over `checks` committed at `committed_at` (the
/// `now` it returned): each pre-paid check whose verdict is allowed gives back its cost; the
/// others (not allowed, never decided, or post-paid: that usage happened) give back nothing.
pub fn refund_invocation(
    prefix: &str,
    checks: &[Check],
    committed_at: Micros,
) -> ScriptInvocation<'static> {
    let mut inv = refund_script().prepare_invoke();
    for check in checks {
        inv.key(counter_key(prefix, &check.key));
    }
    inv.arg(committed_at).arg(checks.len()).arg("1");
    for check in checks {
        let committed = check.verdict.is_some_and(|v| v.allowed);
        push_check(&mut inv, check, if committed { check.cost } else { 0 });
    }
    inv
}

/// The key of one cross-slot reservation: `{prefix}res:{<tag, 32 hex>}:<token>`, in the
/// slot of the tag's counters.
pub fn reservation_key(prefix: &str, tag: u128, token: &str) -> String {
    format!("{prefix}res:{{{tag:032x}}}:{token}")
}

/// A decide run over `checks` (one slot of a cross-slot plan) under the reservation key
/// `reservation` (a [`reservation_key`], passed as the last `KEYS`): idempotent, so a client
/// that resends it charges once (see `lua/decide.lua`).
pub fn reserve_invocation(
    prefix: &str,
    checks: &[Check],
    reservation: &str,
) -> ScriptInvocation<'static> {
    let mut inv = decide_invocation(decide_script(), prefix, checks, None);
    inv.key(reservation);
    inv
}

/// A refund run of the reservation `reservation` over `checks` (the same checks as its
/// [`reserve_invocation`], verdicts or not): gives back what that reserve committed, once,
/// whether or not its reply was read, and nothing if it never committed. Each check is sent at
/// its full cost; the script takes which ones were allowed from the reservation's record.
pub fn refund_reservation_invocation(
    prefix: &str,
    checks: &[Check],
    reservation: &str,
) -> ScriptInvocation<'static> {
    let mut inv = refund_script().prepare_invoke();
    for check in checks {
        inv.key(counter_key(prefix, &check.key));
    }
    inv.key(reservation);
    inv.arg(0).arg(checks.len()).arg("1");
    for check in checks {
        push_check(&mut inv, check, check.cost);
    }
    inv
}

/// What a decide reply says besides the verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Whether the plan was admitted (and, if so, committed).
    pub admitted: bool,
    /// The instant the script decided at, µs since the epoch (Redis's `TIME`).
    pub now: Micros,
    /// The witness's sequence number: test variant only.
    pub seq: Option<u64>,
}

/// Reads a decide reply for `checks` (in the order they were sent), filling every
/// `check.verdict`. A reply of the wrong shape is a [`StoreError::Protocol`]; then no verdict
/// is changed.
pub fn decode(reply: &Value, checks: &mut [Check]) -> Result<Decoded, StoreError> {
    let items = match reply {
        Value::Array(items) => items,
        Value::ServerError(e) => return Err(protocol(format!("error reply: {e:?}"))),
        other => return Err(protocol(format!("expected an array, got {}", kind(other)))),
    };
    let n = checks.len();
    let expected = 2 + 5 * n;
    if items.len() != expected && items.len() != expected + 1 {
        return Err(protocol(format!(
            "expected {expected} elements for {n} checks, got {}",
            items.len()
        )));
    }
    let admitted = flag(&items[0], "admitted")?;
    let now = number(&items[1], "now")?;
    let mut verdicts = Vec::with_capacity(n);
    for (i, fields) in items[2..expected].chunks_exact(5).enumerate() {
        verdicts.push(verdict(fields).map_err(|e| protocol(format!("check {}: {e}", i + 1)))?);
    }
    let seq = match items.get(expected) {
        Some(v) => Some(number(v, "sequence number")?),
        None => None,
    };
    let passed = verdicts
        .iter()
        .zip(checks.iter())
        .all(|(v, c)| v.allowed || !c.enforce);
    if admitted != passed {
        return Err(protocol(format!(
            "admitted is {admitted} but every enforced check allowed is {passed}"
        )));
    }
    for (check, v) in checks.iter_mut().zip(verdicts) {
        check.verdict = Some(v);
    }
    Ok(Decoded { admitted, now, seq })
}

/// One check's five reply fields.
fn verdict(fields: &[Value]) -> Result<Verdict, String> {
    let [allowed, remaining, reset_after, kind, retry_after] = fields else {
        return Err("expected 5 fields".to_owned());
    };
    let allowed = flag(allowed, "allowed").map_err(message)?;
    let retry = number(retry_after, "retry_after").map_err(message)?;
    let retry_after = match number(kind, "retry kind").map_err(message)? {
        0 => RetryAfter::Now,
        1 => RetryAfter::After(retry),
        2 => RetryAfter::Never,
        k => return Err(format!("retry kind {k} is not 0, 1 or 2")),
    };
    if allowed != (retry_after == RetryAfter::Now) {
        return Err("allowed disagrees with the retry kind".to_owned());
    }
    Ok(Verdict {
        allowed,
        remaining: number(remaining, "remaining").map_err(message)?,
        reset_after: number(reset_after, "reset_after").map_err(message)?,
        retry_after,
    })
}

/// A 0/1 integer.
fn flag(v: &Value, what: &str) -> Result<bool, StoreError> {
    match number(v, what)? {
        0 => Ok(false),
        1 => Ok(true),
        k => Err(protocol(format!("{what}: {k} is not 0 or 1"))),
    }
}

/// A non-negative integer, sent as an integer reply or a decimal string.
fn number(v: &Value, what: &str) -> Result<u64, StoreError> {
    let parsed = match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(parse_decimal),
        Value::SimpleString(s) => parse_decimal(s),
        _ => None,
    };
    parsed.ok_or_else(|| {
        let mut shown = format!("{v:?}");
        if shown.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|&i| shown.is_char_boundary(i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        protocol(format!(
            "{what}: expected a non-negative integer, got {shown}"
        ))
    })
}

/// Digits only (no sign, no spaces), fitting in a u64.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Okay => "OK",
        _ => "another type",
    }
}

fn message(e: StoreError) -> String {
    match e {
        StoreError::Protocol(m) => m,
        other => other.to_string(),
    }
}

fn protocol(message: String) -> StoreError {
    StoreError::Protocol(message)
}

#[cfg(test)]
#[path = "script_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod linearizability_tests;

/// A state as the scripts store it (see the headers of `lua/*.lua`): what the script tests
/// compare a key's value with.
#[cfg(test)]
pub(super) fn encoded(state: &crate::algorithm::CounterState) -> String {
    use crate::algorithm::CounterState;
    match state {
        CounterState::Gcra(tat) => tat.0.to_string(),
        CounterState::FixedWindow(w) => format!("{}:{}", w.start, w.count),
        CounterState::SlidingWindow(log) => log.encoded(),
    }
}
