#!/usr/bin/env bash
# The soak (issue "Proof under faults"): the release binary under a steady load with a flood of
# distinct keys, in memory or with Redis, sampled every 10 s: the service's resident memory,
# Redis's memory and key count, decisions and errors from /metrics, and the decision latency
# percentiles of each interval (from the histogram's bucket deltas). Writes
# k6/results/soak-<store>/{samples.csv,k6-summary.json,soak.png} and prints the figures.
# Not in CI. Needs k6 (`GOBIN=$PWD/.tools/bin go install go.k6.io/k6@v1.8.1`), gnuplot,
# redis-server.
#   k6/soak.sh memory|redis [minutes=30] [rate=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?memory or redis}; minutes=${2:-30}; rate=${3:-1000}
out=k6/results/soak-$store
mkdir -p "$out"
k6=${K6_BIN:-.tools/bin/k6}
cargo build --release --quiet
source k6/lib.sh
trap stop_all EXIT

args=(--config k6/soak-config.yaml)
if [ "$store" = redis ]; then
  start_redis "$out"
  port=$REDIS_PORT
  args+=(--redis-url "redis://127.0.0.1:$port")
fi
start_service "$out/service.log" "${args[@]}"
svc=$SERVICE_PID
url="http://$HTTP_ADDR"

"$k6" run --quiet -e URL="$url" -e RATE="$rate" -e DURATION="${minutes}m" \
  --summary-export "$out/k6-summary.json" k6/soak.js > "$out/k6.log" 2>&1 &
load=$!

# One line per 10 s: seconds, RSS MiB, Redis MiB, Redis keys, decisions, errors, p50/p99/p99.9 ms.
echo "seconds,rss_mib,redis_mib,redis_keys,decisions,errors,p50_ms,p99_ms,p999_ms" > "$out/samples.csv"
prev=""
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
  sleep 10
  now=$(( $(date +%s) - start ))
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$svc/status")
  redis_mib=0; keys=0
  if [ "$store" = redis ]; then
    redis_mib=$(redis-cli -p "$port" info memory | awk -F: '/^used_memory:/ {printf "%.1f", $2/1048576}')
    keys=$(redis-cli -p "$port" dbsize)
  fi
  metrics=$(curl -s "$url/metrics")
  cur=$(echo "$metrics" | awk '
    /^ratelimiter_decisions_total/ { d += $NF; if ($0 ~ /outcome="error"/) e += $NF }
    /^ratelimiter_decision_duration_seconds_bucket\{door="http"/ {
      match($0, /le="[^"]*"/); le = substr($0, RSTART+4, RLENGTH-5); b[le] = $NF; order = order " " le }
    END { printf "%d %d", d, e; n = split(order, o, " "); for (i = 1; i <= n; i++) printf " %s=%s", o[i], b[o[i]] }')
  echo "$now $rss $redis_mib $keys $cur" | awk -v prev="$prev" '
    { split(prev, p, " "); for (i = 7; i <= NF; i++) { split($i, kv, "="); split(p[i], pv, "="); le[i] = kv[1]; c[i] = kv[2] - (pv[2] + 0) }
      total = c[NF]; line = $1 "," $2 "," $3 "," $4 "," $5 "," $6
      split("0.5 0.99 0.999", qs, " ")
      for (q = 1; q <= 3; q++) { v = "nan"
        for (i = 7; i <= NF; i++) if (total > 0 && c[i] >= qs[q] * total) { v = (le[i] == "+Inf" ? "inf" : le[i] * 1000); break }
        line = line "," v }
      print line }' >> "$out/samples.csv"
  prev="$now $rss $redis_mib $keys $cur"
done
wait "$load" || echo "k6 reported failed thresholds: see $out/k6.log"

gnuplot <<PLOT
set terminal pngcairo size 1000,700
set output "$out/soak.png"
set datafile separator ","
set multiplot layout 2,1 title "soak, $store store, $rate requests/s with a new key each (1 in 10 on 100 hot keys)"
set xlabel "minutes"; set ylabel "MiB"; set key top left
plot "$out/samples.csv" every ::1 using (\$1/60):2 with lines title "service RSS", \
     "" every ::1 using (\$1/60):3 with lines title "Redis used_memory"
set ylabel "ms (upper bucket bound)"; set logscale y
plot "" every ::1 using (\$1/60):7 with lines title "p50", "" every ::1 using (\$1/60):8 with lines title "p99", \
     "" every ::1 using (\$1/60):9 with lines title "p99.9"
unset multiplot
PLOT
echo "samples: $out/samples.csv; plot: $out/soak.png; k6: $out/k6.log"
awk -F, 'NR > 7 { if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2; if ($3 > rmax) rmax = $3; if ($4 > kmax) kmax = $4; err = $6; d = $5 }
  END { printf "after the first minute: RSS %s..%s MiB, Redis at most %s MiB and %s keys; %d decisions, %d errors\n", min, max, rmax, kmax, d, err }' "$out/samples.csv"
