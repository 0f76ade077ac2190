#!/usr/bin/env bash
# The service's CPU per decision, in memory and with a local redis-server, under the same
# fixed-rate ghz load: the release binary with k6/bench-config (domain `bench`, limits never
# reached, so every decision is a full one), ShouldRateLimit over 64 streams on 4 connections,
# 1,000 `user` values in turn. CPU is utime + stime from /proc/<pid>/stat just before and just
# after the load, divided by the decisions answered OK (ghz's count); Redis's own CPU per
# decision is read the same way, and the service's context switches per decision beside them
# (summed over /proc/<pid>/task/*/status: wake-ups). A fixed rate, not a closed loop, so both
# stores do the same work. Run it on a quiet machine, and more than once.
#   k6/cpu-per-decision.sh [rate=5000] [seconds=15] [runs=1] [stores="memory redis"]
# Needs redis-server, jq, and ghz (GHZ_BIN, else .tools/bin/ghz, built by scripts/go-tool.sh
# when missing). Builds and runs the release binary (honouring CARGO_TARGET_DIR), or runs
# RATELIMITER_BIN when set (to compare two builds); SERVICE_ARGS adds flags to the service
# (e.g. SERVICE_ARGS="--redis-pool-size 4"). Prints one line per run and store and appends it
# to k6/results/cpu-per-decision/runs.csv (the ghz reports and logs live in a temporary
# directory, removed on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-5000}; seconds=${2:-15}; runs=${3:-1}; stores=${4:-memory redis}
out=k6/results/cpu-per-decision
mkdir -p "$out"
[ -n "${RATELIMITER_BIN:-}" ] || cargo build --release --quiet --bin ratelimiter
# The build measured, for runs.csv: RATELIMITER_BIN's file name, or this checkout's commit.
build=$(basename "${RATELIMITER_BIN:-}")
[ -n "$build" ] || build=$(git rev-parse --short HEAD)
source k6/lib.sh
ghz=$(ghz_bin)
work=$(mktemp -d)
trap 'stop_all; rm -rf "$work"' EXIT
ticks_per_s=$(getconf CLK_TCK)

# Context switches (voluntary and not) of a process's live threads: how often it slept and woke.
ctx_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'
}

# The requests ghz cycles through: one `user` descriptor each, 1,000 values.
data=$work/requests.json
bench_requests "$data"

# ghz at `rate` per second for `duration` against $GRPC_ADDR; its JSON report into `report`.
load() {
  local rate=$1 duration=$2 report=$3
  "$ghz" --insecure --proto k6/proto/envoy_ratelimit.proto \
    --call envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit \
    -c 64 --connections 4 --rps "$rate" -z "$duration" -D "$data" \
    --format json --output "$report" "$GRPC_ADDR"
}

# OK answers in a ghz JSON report.
ok_count() {
  jq '.statusCodeDistribution.OK // 0' "$1"
}

# Microseconds of CPU per decision: `ticks` over `decisions`.
per() {
  awk -v t="$1" -v n="$2" -v hz="$ticks_per_s" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "nan" }'
}

[ -f "$out/runs.csv" ] || echo "when,build,store,rate,seconds,decisions,service_us_per_decision,redis_us_per_decision,context_switches_per_decision" > "$out/runs.csv"
for run in $(seq "$runs"); do
  for store in $stores; do
    args=(--config k6/bench-config)
    read -ra extra <<< "${SERVICE_ARGS:-}"
    args+=("${extra[@]}")
    redis_pid=""
    if [ "$store" = redis ]; then
      start_redis "$work"
      redis_pid=$REDIS_PID
      args+=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
    fi
    start_service "$work/service-$store.log" "${args[@]}"
    # Warm-up: connections open, scripts loaded, counters created, allocator grown.
    load "$rate" 3s "$work/warmup-$store.json"
    svc0=$(cpu_ticks "$SERVICE_PID"); red0=${redis_pid:+$(cpu_ticks "$redis_pid")}
    ctx0=$(ctx_switches "$SERVICE_PID")
    load "$rate" "${seconds}s" "$work/ghz-$store.json"
    svc1=$(cpu_ticks "$SERVICE_PID"); red1=${redis_pid:+$(cpu_ticks "$redis_pid")}
    ctx1=$(ctx_switches "$SERVICE_PID")
    decisions=$(ok_count "$work/ghz-$store.json")
    service_us=$(per $((svc1 - svc0)) "$decisions")
    redis_us=nan
    [ -n "$redis_pid" ] && redis_us=$(per $((red1 - red0)) "$decisions")
    switches=$(awk -v c=$((ctx1 - ctx0)) -v n="$decisions" 'BEGIN { if (n > 0) printf "%.2f", c / n; else print "nan" }')
    echo "run $run $store: $decisions decisions at $rate/s, service ${service_us} us CPU per decision" \
      "($switches context switches), redis ${redis_us} us"
    echo "$(date -u +%FT%TZ),$build,$store,$rate,$seconds,$decisions,$service_us,$redis_us,$switches" >> "$out/runs.csv"
    stop_all
    STARTED_PIDS=()
  done
done
