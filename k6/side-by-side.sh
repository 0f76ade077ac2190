#!/usr/bin/env bash
# The side-by-side throughput run: in one run on one machine, ghz calls Envoy's
# ShouldRateLimit (domain `bench`, `user` cycling over 1,000 values: k6/bench-config/) on
#   noop      the no-op tonic server (examples/noop_server.rs): the gRPC ceiling
#   memory    ours, in-memory store
#   redis     ours with one redis-server
#   cluster   ours on a Redis Cluster of 3 masters (no replicas)
# each in a closed loop (STREAMS concurrent streams over CONNECTIONS connections, DURATION
# seconds) and then at each fixed rate of RATES (ghz --rps, same streams). Then, on the one
# redis-server:
#   redis-hot         every request is `user: hot`, held over its limit: Redis calls per
#                     decision show the over-limit cache (expected ~0)
#   redis-2-replicas  two replicas of ours on that Redis, one ghz per replica at once (each
#                     with half the streams and connections), summed: scale-out against 1
# For every run: decisions/s, p50/p95/p99/p99.9 (all from ghz's per-request latencies: see
# ghz_stats below), the service's CPU (utime+stime from /proc/<pid>/stat) in µs per decision,
# and with Redis, from INFO commandstats before and after (summed over Cluster nodes, INFO
# itself left out): Redis calls, EVALSHA calls, EVALSHA usec_per_call and Redis µs, per decision.
#
# Machine sharing: the load client (ghz, itself CPU-hungry), the service and Redis all run on
# this one box and compete for its cores; the no-op ceiling is measured under the same
# conditions, so compare ratios to it, not absolute figures across machines. Run it on an
# otherwise quiet machine: figures taken while anything else builds or runs are noise.
#
# Needs: cargo, Go (ghz is built from scripts/go-tools/ghz into .tools/bin/ghz if missing, or
# set GHZ_BIN), redis-server/redis-cli, jq, gnuplot.
#   k6/side-by-side.sh                      # 20 s per run, rates 1000 5000 10000: ~8 minutes
#   DURATION=5 RATES="1000 5000" k6/side-by-side.sh     # a quick check that it all works
# Environment: DURATION (seconds per run, 20), RATES ("1000 5000 10000"), STREAMS (64),
# CONNECTIONS (4), WARMUP (seconds of unmeasured load before each target, 2), OUT
# (k6/results/side-by-side), TARGETS ("noop memory redis cluster": which to run; redis
# includes the over-limit cache and the two replicas), GHZ_BIN, CARGO_TARGET_DIR.
# Writes OUT/summary.csv (one row per run), OUT/latency.csv (the percentiles per target and
# offered rate), OUT/latency.png (p99 against offered rate, one line per target; the closed
# loop is each line's last point, at the rate it reached), OUT/summary.md (the table printed
# at the end, each target's closed-loop throughput as a ratio to the ceiling's).
set -euo pipefail
cd "$(dirname "$0")/.."
source k6/lib.sh

DURATION=${DURATION:-20}
RATES=${RATES:-1000 5000 10000}
STREAMS=${STREAMS:-64}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-2}
TARGETS=${TARGETS:-noop memory redis cluster}
out=${OUT:-k6/results/side-by-side}
target_dir=${CARGO_TARGET_DIR:-target}
noop_bin=$target_dir/release/examples/noop_server
clk_tck=$(getconf CLK_TCK)
config=(--config k6/bench-config)
work=$(mktemp -d)
LOAD_PIDS=()
REPORTS=()
trap 'kill "${LOAD_PIDS[@]}" 2>/dev/null || true; stop_all; rm -rf "$work"' EXIT

# The release binaries, and ghz from its pinned module if it is not there yet.
build() {
  cargo build --release --quiet --bin ratelimiter --example noop_server
  ghz=$(ghz_bin)
}

# The requests: users.json cycles over 1,000 `user` values, hot.json is `user: hot` alone.
write_requests() {
  bench_requests "$work/users.json"
  bench_requests "$work/hot.json" hot
}

# Throughput and latency from ghz JSON reports (`-O json`) of runs made at the same time (one
# per replica): "requests seconds requests/s errors p50 p95 p99 p99.9", the requests summed,
# the longest run's seconds, the percentiles (ms, nearest rank) over every successful call's
# latency in the reports' per-request details (ghz keeps the first 1,000,000 of a run).
ghz_stats() {
  local totals
  totals=$(jq -r '[.count, .total, ([(.errorDistribution // {})[]] | add // 0)] | @tsv' "$@" |
    awk '{ n += $1; if ($2 > ns) ns = $2; e += $3 } END { printf "%d %.3f %d", n, ns / 1e9, e }')
  jq -r '.details[]? | select((.error // "") == "") | .latency' "$@" | sort -n |
    awk -v totals="$totals" '{ v[NR] = $1 }
      function rank(q,  r) { r = int(q * NR); if (r < q * NR) r++; if (r < 1) r = 1; return v[r] / 1e6 }
      END { split(totals, t, " ")
        printf "%d %.3f %.0f %d %.3f %.3f %.3f %.3f\n", t[1], t[2], (t[2] > 0 ? t[1] / t[2] : 0), t[3],
          rank(0.50), rank(0.95), rank(0.99), rank(0.999) }'
}

# The no-op server on a free port -> NOOP_PID, NOOP_ADDR.
start_noop() {
  "$noop_bin" --grpc-addr 127.0.0.1:0 > "$work/noop.log" 2>&1 &
  NOOP_PID=$!
  STARTED_PIDS+=("$NOOP_PID")
  NOOP_ADDR=""
  until [ -n "$NOOP_ADDR" ]; do
    kill -0 "$NOOP_PID" 2>/dev/null || { cat "$work/noop.log" >&2; return 1; }
    sleep 0.1
    NOOP_ADDR=$(awk '/^listening / { print $2; exit }' "$work/noop.log")
  done
}

# Stops the given processes this script started, and forgets them.
stop_pids() {
  local pid keep=()
  kill "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
  for pid in "${STARTED_PIDS[@]}"; do
    [[ " $* " == *" $pid "* ]] || keep+=("$pid")
  done
  STARTED_PIDS=("${keep[@]}")
}

# "evalsha_calls evalsha_usec all_calls all_usec" summed over the given Redis ports (INFO
# left out: it is this script asking); nothing when no port is given.
redis_counts() {
  [ $# -gt 0 ] || return 0
  local port
  for port in "$@"; do redis-cli -p "$port" info commandstats; done | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" {
        calls += $3; usec += $5
        if ($1 == "cmdstat_evalsha") { ecalls += $3; eusec += $5 } }
      END { printf "%d %d %d %d\n", ecalls, eusec, calls, usec }'
}

# One ghz process: <addr> <data file> <report> <rate (0: closed loop)> <streams> <connections>
# <seconds>.
run_ghz() {
  local args=(--insecure --proto k6/proto/envoy_ratelimit.proto
    --call envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
    -D "$2" -c "$5" --connections "$6" -z "$7s" --duration-stop ignore -O json -o "$3")
  [ "$4" -eq 0 ] || args+=(--rps "$4")
  "$ghz" "${args[@]}" "$1" > "$3.log" 2>&1 || { cat "$3.log" >&2; return 1; }
}

# ghz on every address of <addrs> at once, the streams, connections and rate split evenly:
# <addrs> <data file> <rate> <seconds> <report prefix> -> REPORTS (the JSON reports' paths).
load() {
  local addrs data=$2 rate=$3 seconds=$4 prefix=$5 i pid n
  read -ra addrs <<< "$1"
  n=${#addrs[@]}
  REPORTS=()
  LOAD_PIDS=()
  for i in "${!addrs[@]}"; do
    REPORTS+=("$prefix-$i.json")
    run_ghz "${addrs[$i]}" "$data" "$prefix-$i.json" $((rate / n)) $((STREAMS / n)) \
      $((CONNECTIONS / n)) "$seconds" &
    LOAD_PIDS+=("$!")
  done
  for pid in "${LOAD_PIDS[@]}"; do wait "$pid"; done
  LOAD_PIDS=()
}

# One measured run: <target> <rate (0: closed loop)> <data file> <addrs> <service pids>
# <redis ports>; appends its row to summary.csv and prints it.
measure() {
  local target=$1 rate=$2 data=$3 addr_list=$4 pids ports
  read -ra pids <<< "$5"
  read -ra ports <<< "$6"
  local cpu0 cpu1 redis0 redis1 stats row
  cpu0=$(cpu_ticks "${pids[@]}")
  redis0=$(redis_counts "${ports[@]}")
  load "$addr_list" "$data" "$rate" "$DURATION" "$work/$target-$rate"
  cpu1=$(cpu_ticks "${pids[@]}")
  redis1=$(redis_counts "${ports[@]}")
  stats=$(ghz_stats "${REPORTS[@]}")
  rm -f "${REPORTS[@]}"
  row=$(echo "$stats $((cpu1 - cpu0)) $redis0 $redis1" | awk -v tck="$clk_tck" \
    -v target="$target" -v rate="$rate" '{
      req = $1; dec = (req > 0 ? req : 1)
      calls = evals = per_call = redis_us = ""
      if (NF >= 17) {
        calls = sprintf("%.3f", ($16 - $12) / dec); evals = sprintf("%.3f", ($14 - $10) / dec)
        if ($14 > $10) per_call = sprintf("%.2f", ($15 - $11) / ($14 - $10))
        redis_us = sprintf("%.2f", ($17 - $13) / dec) }
      printf "%s,%s,%d,%s,%s,%d,%s,%s,%s,%s,%.1f,%s,%s,%s,%s\n", target,
        (rate == 0 ? "closed" : rate), req, $2, $3, $4, $5, $6, $7, $8,
        $9 * 1e6 / tck / dec, calls, evals, per_call, redis_us }')
  echo "$row" >> "$out/summary.csv"
  echo "$row" >&2
}

# Unmeasured load for WARMUP seconds on <addrs> (connections, scripts, allocators warm up).
warm_up() {
  [ "$WARMUP" -gt 0 ] || return 0
  load "$1" "$work/users.json" 0 "$WARMUP" "$work/warmup"
  rm -f "${REPORTS[@]}"
}

# The closed loop, then each fixed rate, on one target: <target> <addrs> <pids> <redis ports>.
measure_target() {
  local rate
  echo "== $1" >&2
  warm_up "$2"
  measure "$1" 0 "$work/users.json" "$2" "$3" "$4"
  for rate in $RATES; do
    measure "$1" "$rate" "$work/users.json" "$2" "$3" "$4"
  done
}

# Ours on one redis-server: every run, then the over-limit cache, then two replicas.
measure_redis() {
  start_redis "$work"
  local redis_pid=$REDIS_PID port=$REDIS_PORT url="redis://127.0.0.1:$REDIS_PORT"
  start_service "$work/redis-1.log" "${config[@]}" --redis-url "$url"
  local pid1=$SERVICE_PID addr1=$GRPC_ADDR
  measure_target redis "$addr1" "$pid1" "$port"
  echo "== redis-hot" >&2
  measure redis-hot 0 "$work/hot.json" "$addr1" "$pid1" "$port"
  start_service "$work/redis-2.log" "${config[@]}" --redis-url "$url"
  echo "== redis-2-replicas" >&2
  warm_up "$addr1 $GRPC_ADDR"
  measure redis-2-replicas 0 "$work/users.json" "$addr1 $GRPC_ADDR" "$pid1 $SERVICE_PID" "$port"
  stop_pids "$pid1" "$SERVICE_PID" "$redis_pid"
}

# Ours on a 3-master Redis Cluster.
measure_cluster() {
  local before=("${STARTED_PIDS[@]}")
  start_cluster "$work"
  start_service "$work/cluster.log" "${config[@]}" --redis-url "$CLUSTER_URL"
  measure_target cluster "$GRPC_ADDR" "$SERVICE_PID" "${CLUSTER_PORTS[*]}"
  stop_pids "${STARTED_PIDS[@]:${#before[@]}}"
}

SUMMARY_HEADER="target,offered_rps,requests,seconds,decisions_per_s,errors,p50_ms,p95_ms,p99_ms,p999_ms,cpu_us_per_decision,redis_calls_per_decision,evalsha_per_decision,evalsha_usec_per_call,redis_us_per_decision"
PLOTTED="noop memory redis cluster"

# What each target is called in the table and the plot.
label() {
  case $1 in
    noop) echo "no-op tonic server (ceiling)" ;;
    memory) echo "ours, memory" ;;
    redis) echo "ours, 1 Redis" ;;
    cluster) echo "ours, 3-master Redis Cluster" ;;
    redis-2-replicas) echo "ours, 2 replicas, 1 Redis" ;;
    redis-hot) echo "ours, 1 Redis, only \`user: hot\` (over its limit)" ;;
  esac
}

# latency.csv from summary.csv, and latency.png: p99 against the offered rate, the closed
# loop at the rate it reached.
plot_latency() {
  local t plots=()
  echo "target,offered_rps,decisions_per_s,p50_ms,p95_ms,p99_ms,p999_ms" > "$out/latency.csv"
  for t in $PLOTTED; do
    awk -F, -v t="$t" '$1 == t { print $1 "," $2 "," $5 "," $7 "," $8 "," $9 "," $10 }' \
      "$out/summary.csv" >> "$out/latency.csv"
    awk -F, -v t="$t" '$1 == t { print ($2 == "closed" ? $5 : $2), $9 }' "$out/summary.csv" |
      sort -n > "$work/$t.dat"
    plots+=("\"$work/$t.dat\" using 1:2 with linespoints title \"$(label "$t")\"")
  done
  gnuplot <<PLOT
set terminal pngcairo size 1000,650
set output "$out/latency.png"
set title "ShouldRateLimit p99 against offered load, ${DURATION} s per point, $STREAMS streams over $CONNECTIONS connections\n(each line's last point: closed loop, at the rate it reached)"
set xlabel "requests/s"; set ylabel "p99, ms"; set logscale xy; set grid; set key top left
plot $(IFS=,; echo "${plots[*]}")
PLOT
}

# The markdown table (also OUT/summary.md): every closed loop against the ceiling's, p99 at
# each fixed rate, and the scale-out and over-limit-cache figures.
print_table() {
  local t
  {
    echo "| target | closed loop, decisions/s | ratio to the ceiling | p50 / p99 / p99.9 ms | service CPU µs/decision | Redis commands/decision (the script's own included) | EVALSHA µs/call | Redis µs/decision |$(for r in $RATES; do printf ' p99 at %s/s |' "$r"; done)"
    echo "|---|---|---|---|---|---|---|---|$(for _ in $RATES; do printf -- '---|'; done)"
    for t in noop memory redis cluster redis-2-replicas redis-hot; do
      awk -F, -v t="$t" -v label="$(label "$t")" -v rates="$RATES" '
        function or_dash(v) { return v == "" ? "–" : v }
        $1 == "noop" && $2 == "closed" { ceiling = $5 }
        $1 == t && $2 == "closed" { row = sprintf("| %s | %.0f | %.2f | %s / %s / %s | %s | %s | %s | %s |", label, $5,
            (ceiling > 0 ? $5 / ceiling : 0), $7, $9, $10, $11, or_dash($12), or_dash($14), or_dash($15)) }
        $1 == t && $2 != "closed" { p99[$2] = $9 }
        END { if (row == "") exit; n = split(rates, r, " ")
          for (i = 1; i <= n; i++) row = row " " or_dash(p99[r[i]]) " |"
          print row }' "$out/summary.csv"
    done
    echo
    awk -F, '$2 == "closed" { d[$1] = $5; calls[$1] = $12; evals[$1] = $13; n[$1] = $3 }
      END {
        if (d["redis"] > 0) printf "- scale-out: 2 replicas on one Redis %.0f decisions/s, %.2f x one replica; 3-master Cluster %.2f x one Redis\n", d["redis-2-replicas"], d["redis-2-replicas"] / d["redis"], d["cluster"] / d["redis"]
        if (n["redis-hot"] > 0) printf "- over-limit cache: %d decisions of `user: hot`, %s Redis commands per decision (%s EVALSHA per decision)\n", n["redis-hot"], calls["redis-hot"], evals["redis-hot"] }' "$out/summary.csv"
  } | tee "$out/summary.md"
}

# Whether TARGETS names <target>.
wanted() {
  [[ " $TARGETS " == *" $1 "* ]]
}

main() {
  build
  mkdir -p "$out"
  write_requests
  echo "$SUMMARY_HEADER" > "$out/summary.csv"
  if wanted noop; then
    start_noop
    measure_target noop "$NOOP_ADDR" "$NOOP_PID" ""
    stop_pids "$NOOP_PID"
  fi
  if wanted memory; then
    start_service "$work/memory.log" "${config[@]}"
    measure_target memory "$GRPC_ADDR" "$SERVICE_PID" ""
    stop_pids "$SERVICE_PID"
  fi
  if wanted redis; then measure_redis; fi
  if wanted cluster; then measure_cluster; fi
  plot_latency
  echo
  print_table
  echo
  echo "rows: $out/summary.csv; percentiles: $out/latency.csv; plot: $out/latency.png"
}

main
