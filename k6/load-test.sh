#!/usr/bin/env bash
# The load test of every door: the release binary with k6/bench-config, in memory or
# with Redis, under k6 at fixed arrival rates (1k, 5k, 10k decisions/s) and in a closed loop
# (saturated), through each door in turn:
#   check            POST /check                      k6/check.js
#   allow            gRPC AllowRequest                k6/allow.js
#   should           gRPC ShouldRateLimit             k6/should.js
#   envoy-ext-authz  HTTP through Envoy, ext_authz    k6/envoy.js + k6/envoy-ext-authz.yaml
#   envoy-ratelimit  HTTP through Envoy, rate limit   k6/envoy.js + k6/envoy-ratelimit.yaml
# Writes k6/results/load-test/<store>/: <door>-<rate>.json (k6 --summary-export; <rate> is
# 1000, 5000, 10000 or saturated), summary.csv (door, rate, achieved/s, p50, p95, p99, p99.9 in
# ms, errors = answers that were not decisions, dropped = iterations k6 could not start in
# time), summary.md (the same as a markdown table), p99.png (p99 against the achieved rate,
# one line per door), and logs/.
#
# On a 2-core machine, k6 itself saturates near 15k requests/s (less for gRPC, and
# less again with Envoy on the same cores): the saturated row is then k6's ceiling, not the
# service's, and a fixed rate k6 cannot keep shows as dropped iterations. Throughput belongs to
# ghz; this test is for latency at fixed rates. Everything runs on one machine: run it quiet.
#
# Needs cargo, redis-server (for redis), Envoy (ENVOY_BIN, or `make setup`), gnuplot, jq,
# and k6 (K6_BIN, else .tools/bin/k6, built by scripts/go-tool.sh when missing).
#   k6/load-test.sh [memory|redis]
# Environment: DURATION (30s per run; e.g. 5s to check the script), RATES ("1000 5000
# 10000"), DOORS (all five), VUS (64, the closed loop's users), ENVOY_CONCURRENCY (2).
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-memory}
case $store in memory | redis) ;; *) echo "usage: $0 [memory|redis]" >&2; exit 2 ;; esac
export DURATION=${DURATION:-30s}
rates=${RATES:-1000 5000 10000}
doors=${DOORS:-check allow should envoy-ext-authz envoy-ratelimit}
out=k6/results/load-test/$store
mkdir -p "$out/logs"
source k6/lib.sh
trap stop_all EXIT

cargo build --release --quiet
k6=${K6_BIN:-.tools/bin/k6}
if [ ! -x "$k6" ]; then
  [ -z "${K6_BIN:-}" ] || { echo "K6_BIN=$K6_BIN is not an executable" >&2; exit 1; }
  bash scripts/go-tool.sh k6 "$k6"
fi

service_args=(--config k6/bench-config)
if [ "$store" = redis ]; then
  start_redis "$out/logs"
  service_args+=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
fi
start_service "$out/logs/service.log" "${service_args[@]}"

# One k6 run: <door> <script> <rate|saturated> [k6 -e arguments...].
run_k6() {
  local door=$1 script=$2 rate=$3; shift 3
  local load=(-e RATE="$rate")
  [ "$rate" = saturated ] && load=(-e SATURATE=1)
  echo "$door at $rate for $DURATION"
  "$k6" run --quiet --no-usage-report "${load[@]}" "$@" \
    --summary-export "$out/$door-$rate.json" "$script" > "$out/logs/k6-$door-$rate.log" 2>&1 ||
    echo "  k6 failed (checks or the run): see $out/logs/k6-$door-$rate.log"
  sleep 2
}

# Every rate of one door, with the Envoy it needs.
run_door() {
  local door=$1 script target=()
  case $door in
    check) script=k6/check.js; target=(-e URL="http://$HTTP_ADDR") ;;
    allow) script=k6/allow.js; target=(-e GRPC_ADDR="$GRPC_ADDR") ;;
    should) script=k6/should.js; target=(-e GRPC_ADDR="$GRPC_ADDR") ;;
    envoy-ext-authz | envoy-ratelimit)
      mkdir -p "$out/logs/$door"
      start_envoy "k6/$door.yaml" "$out/logs/$door" "${GRPC_ADDR##*:}"
      script=k6/envoy.js; target=(-e URL="$ENVOY_URL") ;;
    *) echo "unknown door $door" >&2; return 1 ;;
  esac
  for rate in $rates saturated; do
    run_k6 "$door" "$script" "$rate" "${target[@]}"
  done
  if [ "$door" = envoy-ext-authz ] || [ "$door" = envoy-ratelimit ]; then
    stop_pid "$ENVOY_PID"
  fi
}

for door in $doors; do
  run_door "$door"
done

# summary.csv: one row per run, from the k6 summaries.
summary_row() {
  jq -r --arg door "$1" --arg rate "$2" '.metrics as $m
    | ($m.http_req_duration // $m.grpc_req_duration // {}) as $lat
    | [$door, $rate, (($m.iterations.rate // 0) | round)]
      + [("p(50)", "p(95)", "p(99)", "p(99.9)") | $lat[.] // "nan" | if type == "number" then (. * 1000 | round / 1000) else . end]
      + [($m.checks.fails // "nan"), ($m.dropped_iterations.count // 0)]
    | @csv' "$3" | tr -d '"'
}
echo "door,rate,achieved_per_s,p50_ms,p95_ms,p99_ms,p999_ms,errors,dropped" > "$out/summary.csv"
for door in $doors; do
  for rate in $rates saturated; do
    [ ! -f "$out/$door-$rate.json" ] || summary_row "$door" "$rate" "$out/$door-$rate.json" >> "$out/summary.csv"
  done
done

# p99.png: p99 against the achieved rate, one line per door (its rightmost point is saturated).
gnuplot <<PLOT
set terminal pngcairo size 1000,650
set output "$out/p99.png"
set datafile separator ","
set title "p99 latency against load, $store store (k6; each door's last point is the closed loop)"
set xlabel "decisions per second (achieved)"; set ylabel "p99, ms"; set logscale y
set key top left; set grid
plot for [door in "$doors"] "$out/summary.csv" every ::1 \
  using (strcol(1) eq door ? \$3 : NaN):6 with linespoints title door
PLOT
# summary.md: the same rows as a markdown table (k6/results.md quotes it).
awk -F, 'NR == 1 { print "| door | offered | achieved/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | dropped |"
    print "|---|---|---|---|---|---|---|---|---|"; next }
  { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, ($2 == "saturated" ? "closed loop" : $2 "/s"),
      $3, $4, $5, $6, $7, $8, $9 }' "$out/summary.csv" > "$out/summary.md"
column -s, -t < "$out/summary.csv"
echo "results: $out (summary.csv, p99.png, <door>-<rate>.json, logs/)"
