//! What the decide script costs inside Redis, against the smallest script per algorithm.
//!
//! Starts its own `redis-server` on a free port (the tests' harness), loads the production
//! decide script exactly as the service builds it (`store::redis::script::decide_script`) and
//! the yardsticks of `benches/minimal/<algorithm>.lua` (one pre-paid check, the same clock,
//! values and expiry), and sends each the service's own `KEYS`/`ARGV`
//! (`script::decide_invocation`) over 1,000 keys, in pipelines. Redis's own accounting is the
//! measure: `CONFIG RESETSTAT` before a batch, `usec / calls` of the command in
//! `INFO commandstats` after it, so client and network time never count.
//!
//! Each round, per plan: empty the database, touch every key once (warm-up, not counted), then
//! `SCRIPT_COST_CALLS` (20,000) measured calls, for the decide script, its yardstick, and the
//! same decide as a Redis Functions library (`FCALL`, a proposal measured for information: its
//! definitions run once at `FUNCTION LOAD` instead of on every call), back to back, so each
//! round's ratio compares them under the same load. The table gives medians over
//! `SCRIPT_COST_ROUNDS` (5) rounds and the range of the ratio (decide / yardstick). Plans of
//! two checks have no yardstick: their cost is printed for information.
//!
//! Run with `cargo bench --bench script_cost` (needs `redis-server` on PATH, `make setup`);
//! it prints the table on stdout; the server's scratch directory (under the system temp
//! directory) is removed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use ratelimiter::algorithm::{Algorithm, Quota};
use ratelimiter::store::redis::script::{counter_key, decide_invocation, decide_script, decode};
use ratelimiter::store::{Check, CounterKey};
use redis::{Script, Value};
use redis_server::RedisServer;

/// Distinct counters the calls cycle over.
const KEYS: u128 = 1_000;
/// Calls per pipeline.
const PIPELINE: usize = 100;
/// The service's default key prefix.
const PREFIX: &str = "rl:";
/// Every check: 1,000 per minute (never exceeded by a round's ~21 calls per key), cost 1.
const LIMIT: u64 = 1_000;
const WINDOW_US: u64 = 60_000_000;

/// One row of the table: a plan's algorithms (one check each, on one descriptor), and the
/// yardstick to compare with, if any.
struct Row {
    name: &'static str,
    algorithms: Vec<Algorithm>,
    minimal: Option<Script>,
}

fn rows() -> Vec<Row> {
    let minimal = |source: &str| Some(Script::new(source));
    let one = |name, algorithm, source| Row {
        name,
        algorithms: vec![algorithm],
        minimal: minimal(source),
    };
    let two = |name, algorithms: [Algorithm; 2]| Row {
        name,
        algorithms: algorithms.to_vec(),
        minimal: None,
    };
    use Algorithm::{FixedWindow, SlidingWindow, TokenBucket};
    vec![
        one(
            "token_bucket",
            TokenBucket,
            include_str!("minimal/token_bucket.lua"),
        ),
        one(
            "sliding_window",
            SlidingWindow,
            include_str!("minimal/sliding_window.lua"),
        ),
        one(
            "fixed_window",
            FixedWindow,
            include_str!("minimal/fixed_window.lua"),
        ),
        two("2 x token_bucket", [TokenBucket, TokenBucket]),
        two("2 x sliding_window", [SlidingWindow, SlidingWindow]),
        two("2 x fixed_window", [FixedWindow, FixedWindow]),
        two("token_bucket + fixed_window", [TokenBucket, FixedWindow]),
    ]
}

/// The plan of `algorithms` on the descriptor `tag`: check `i` is limit `i` of it.
fn plan(algorithms: &[Algorithm], tag: u128) -> Vec<Check> {
    (0u64..)
        .zip(algorithms)
        .map(|(limit, &algorithm)| Check {
            key: CounterKey { tag, limit },
            algorithm,
            quota: Quota::new(LIMIT, WINDOW_US),
            cost: 1,
            enforce: true,
            post_paid: false,
            verdict: None,
        })
        .collect()
}

/// What the calls run: a script by `EVALSHA`, or the decide library's function by `FCALL`.
#[derive(Clone, Copy)]
enum Runner<'a> {
    Script(&'a Script),
    Function,
}

impl Runner<'_> {
    /// Appends one run over `checks` to `pipe`, with the service's `KEYS` and `ARGV`.
    fn push(self, pipe: &mut redis::Pipeline, checks: &[Check]) {
        match self {
            Runner::Script(script) => {
                pipe.invoke_script(&decide_invocation(script, PREFIX, checks, None));
            }
            Runner::Function => {
                pipe.add_command(fcall(checks));
            }
        }
    }

    /// The command `INFO commandstats` counts these runs under.
    fn command(self) -> &'static str {
        match self {
            Runner::Script(_) => "evalsha",
            Runner::Function => "fcall",
        }
    }
}

/// Sends `calls` runs over the plans of `plans` (cycling), in pipelines; every reply must
/// decode and admit.
fn send(con: &mut redis::Connection, runner: Runner, plans: &mut [Vec<Check>], calls: usize) {
    let (mut sent, cycle) = (0, plans.len());
    while sent < calls {
        let batch = PIPELINE.min(calls - sent);
        let at = |k: usize| (sent + k) % cycle;
        let mut pipe = redis::pipe();
        for k in 0..batch {
            runner.push(&mut pipe, &plans[at(k)]);
        }
        let replies: Vec<Value> = pipe.query(con).expect("a pipeline of script runs");
        for (k, reply) in replies.iter().enumerate() {
            let decoded = decode(reply, &mut plans[at(k)]).expect("a decide reply");
            assert!(decoded.admitted, "the bench's quota admits every call");
        }
        sent += batch;
    }
}

/// `usec / calls` of `command` since the last `CONFIG RESETSTAT`.
fn usec_per_call(con: &mut redis::Connection, command: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .expect("the command in commandstats");
    let field = |name: &str| -> f64 {
        line.split(',')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .expect("calls and usec in commandstats")
    };
    field("usec") / field("calls")
}

/// Redis µs per call of `runner` over `plans`: emptied, warmed (one call per plan), then
/// `calls` counted calls.
fn measure(
    con: &mut redis::Connection,
    runner: Runner,
    plans: &mut [Vec<Check>],
    calls: usize,
) -> f64 {
    redis::cmd("FLUSHALL").exec(con).expect("FLUSHALL");
    let warm_up = plans.len();
    send(con, runner, plans, warm_up);
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(con)
        .expect("CONFIG RESETSTAT");
    send(con, runner, plans, calls);
    usec_per_call(con, runner.command())
}

/// One row's figures, each a list over the rounds: decide µs/call, yardstick µs/call, their
/// ratio, and decide as a library function (`FCALL`) µs/call.
#[derive(Default)]
struct Figures {
    decide: Vec<f64>,
    minimal: Vec<f64>,
    ratio: Vec<f64>,
    fcall: Vec<f64>,
}

fn row_figures(con: &mut redis::Connection, row: &Row, rounds: usize, calls: usize) -> Figures {
    let mut plans: Vec<Vec<Check>> = (0..KEYS).map(|t| plan(&row.algorithms, t)).collect();
    let mut f = Figures::default();
    for _ in 0..rounds {
        let d = measure(con, Runner::Script(decide_script()), &mut plans, calls);
        f.decide.push(d);
        if let Some(script) = &row.minimal {
            let m = measure(con, Runner::Script(script), &mut plans, calls);
            f.minimal.push(m);
            f.ratio.push(d / m);
        }
        f.fcall
            .push(measure(con, Runner::Function, &mut plans, calls));
    }
    f
}

/// The median of `v`, to two decimals; "-" for none.
fn median(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2)
        .map_or_else(|| "-".to_owned(), |m| format!("{m:.2}"))
}

/// "lowest-highest" of `v`; empty for none.
fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo:.2}-{hi:.2}"),
        _ => String::new(),
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The decide script as a Redis Functions library, a proposal measured for information: the
/// definitions run once, at `FUNCTION LOAD`, and each `FCALL` runs only `decide.lua`'s body
/// (`KEYS` and `ARGV` become the function's arguments).
const DECIDE_LIBRARY: &str = concat!(
    "#!lua name=ratelimiter_bench\nlocal KEYS, ARGV\n",
    include_str!("../lua/common.lua"),
    include_str!("../lua/clock_redis.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/sliding_window.lua"),
    include_str!("../lua/fixed_window.lua"),
    include_str!("../lua/keys.lua"),
    "redis.register_function('ratelimiter_decide', function(keys, args)\n",
    "KEYS, ARGV = keys, args\n",
    include_str!("../lua/decide.lua"),
    "\nend)\n",
);

/// `FCALL` of the library's decide over `checks`, with the `KEYS` and `ARGV` of
/// `script::decide_invocation`.
fn fcall(checks: &[Check]) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ratelimiter_decide").arg(checks.len());
    for check in checks {
        cmd.arg(counter_key(PREFIX, &check.key));
    }
    cmd.arg(0).arg(checks.len()).arg("1");
    for c in checks {
        let q = &c.quota;
        cmd.arg(c.algorithm.as_str())
            .arg(q.limit)
            .arg(q.window)
            .arg(q.burst)
            .arg(c.cost)
            .arg("1");
    }
    cmd
}

/// Loads every script and the library (`EVALSHA` needs them in the script cache).
fn load_all(con: &mut redis::Connection, rows: &[Row]) {
    let scripts = rows.iter().filter_map(|r| r.minimal.as_ref());
    for script in scripts.chain([decide_script()]) {
        script.prepare_invoke().load(con).expect("SCRIPT LOAD");
    }
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(DECIDE_LIBRARY)
        .exec(con)
        .expect("FUNCTION LOAD");
}

fn redis_version(con: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query(con).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_owned()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // as a smoke run: every script loaded and called, a handful of times.
    let measuring = std::env::args().any(|a| a == "--bench");
    let calls = env_or("SCRIPT_COST_CALLS", if measuring { 20_000 } else { 50 });
    let rounds = env_or("SCRIPT_COST_ROUNDS", if measuring { 5 } else { 1 }).max(1);
    let server = RedisServer::start();
    let mut con = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("a connection to the bench's redis-server");
    let rows = rows();
    load_all(&mut con, &rows);
    println!(
        "Redis {}: usec per call inside Redis (INFO commandstats), median of {rounds} rounds \
         of {calls} calls over {KEYS} keys",
        redis_version(&mut con)
    );
    println!(
        "{:<28} {:>8} {:>8} {:>6} {:>11}  {:>8}",
        "plan", "decide", "minimal", "ratio", "ratio range", "fcall"
    );
    for row in &rows {
        let f = row_figures(&mut con, row, rounds, calls);
        println!(
            "{:<28} {:>8} {:>8} {:>6} {:>11}  {:>8}",
            row.name,
            median(f.decide),
            median(f.minimal),
            median(f.ratio.clone()),
            range(&f.ratio),
            median(f.fcall),
        );
    }
    let dir = server.dir().to_owned();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
