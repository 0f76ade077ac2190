#!/usr/bin/env bash
# A short real scenario for the dashboard picture (a dev tool, not part of the tests):
# Redis, two replicas sharing it (fail_open), a Prometheus scraping both every 2 s, and load:
# steady traffic, a client hammering a tight limit, Redis killed for 25 s, then restarted.
# Then grafana/draw_panels.py draws the dashboard's main panels into grafana/dashboard.png.
#
#   cargo build && bash grafana/demo_run.sh        # needs redis-server, prometheus
#   PYTHON=.tools/plot-venv/bin/python (a venv with matplotlib) by default
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/ratelimiter}
PYTHON=${PYTHON:-.tools/plot-venv/bin/python}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS=$(port); A=$(port); B=$(port); PROM=$(port)

cat > "$work/service.yaml" <<'YAML'
settings: { on_store_failure: fail_open }
clients:
  tiers:
    roomy: [ { name: roomy-per-minute, limit: 1000000, window: 1m } ]
    tight: [ { name: tight-per-10s, limit: 20, window: 10s } ]
  keys:
    - { key: demo-roomy, tier: roomy }
    - { key: demo-tight, tier: tight }
    - { key: demo-abuser, tier: tight }
YAML

start_redis() {
  redis-server --port "$REDIS" --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
}
start_redis
sleep 0.5
for p in "$A" "$B"; do
  "$BIN" --config "$work/service.yaml" --http-addr "127.0.0.1:$p" \
    --grpc-addr 127.0.0.1:0 --redis-url "redis://127.0.0.1:$REDIS" >"$work/rl-$p.log" 2>&1 &
  pids+=($!)
done
cat > "$work/prometheus.yml" <<YAML
global: { scrape_interval: 2s }
scrape_configs:
  - job_name: ratelimiter
    static_configs: [ { targets: ["127.0.0.1:$A", "127.0.0.1:$B"] } ]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$PROM" >"$work/prometheus.log" 2>&1 &
pids+=($!)
sleep 3

# Load: PHASE names what the clients do; each client thread loops until the file says stop.
cat > "$work/load.py" <<'PY'
import http.client, sys, threading, time, pathlib
ports, phase_file = sys.argv[1].split(","), pathlib.Path(sys.argv[2])
def client(i, key, pause, only_in=None):
    conns = [http.client.HTTPConnection("127.0.0.1", int(p), timeout=5) for p in ports]
    n = 0
    while (phase := phase_file.read_text().strip()) != "stop":
        if only_in and phase != only_in:
            time.sleep(0.1); continue
        c = conns[n % len(conns)]; n += 1
        try:
            c.request("POST", "/check", headers={"X-API-Key": key}); c.getresponse().read()
        except Exception:
            conns[(n - 1) % len(conns)] = http.client.HTTPConnection("127.0.0.1", int(ports[(n - 1) % len(conns)]), timeout=5)
        time.sleep(pause)
threads = [threading.Thread(target=client, args=(0, "demo-roomy", 0.004)),
           threading.Thread(target=client, args=(1, "demo-roomy", 0.004)),
           threading.Thread(target=client, args=(2, "demo-tight", 0.2)),
           threading.Thread(target=client, args=(3, "demo-abuser", 0.002, "spike"))]
for t in threads: t.start()
for t in threads: t.join()
PY
echo steady >"$work/phase"
start=$(date +%s)
"$PYTHON" "$work/load.py" "$A,$B" "$work/phase" &
load=$!
pids+=("$load")
sleep 50; echo spike >"$work/phase"
sleep 30; echo steady >"$work/phase"
sleep 10; kill "$redis_pid"; echo "Redis down"
sleep 25; start_redis; echo "Redis back"
sleep 35; echo stop >"$work/phase"
wait "$load"
end=$(date +%s)
sleep 3
"$PYTHON" grafana/draw_panels.py --prometheus "http://127.0.0.1:$PROM" --start "$start" --end "$end" \
  --title "ratelimiter, 2 replicas (debug build) on one Redis: steady load, a client hammering a tight limit at 50 s, Redis down from 90 s to 115 s"
echo "wrote grafana/dashboard.png"
