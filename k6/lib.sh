# k6/lib.sh: what the load scripts of k6/ share (sourced, not run): starting redis-server and
# the release binary on free ports, reading the addresses they bound, and stopping everything
# a script started when it exits.
#   source k6/lib.sh; trap stop_all EXIT
#   start_redis <dir> [redis-server args...]   -> REDIS_PORT, REDIS_PID
#   start_service <log> [ratelimiter args...]  -> SERVICE_PID, HTTP_ADDR, GRPC_ADDR
#   start_envoy <config> <dir> <grpc_port>     -> ENVOY_PID, ENVOY_URL
#   start_cluster <dir>                        -> CLUSTER_PORTS, CLUSTER_URL
#   ghz_bin                                    -> the ghz binary's path (built if missing)
#   bench_requests <file> [value]              ghz's requests: 1,000 `user`s, or one value
#   cpu_ticks <pid>...                         utime + stime used so far, summed
#   stop_pid <pid>

STARTED_PIDS=()

# Kills every process this script started (for `trap stop_all EXIT`).
stop_all() {
  if [ ${#STARTED_PIDS[@]} -gt 0 ]; then
    kill "${STARTED_PIDS[@]}" 2>/dev/null || true
    wait "${STARTED_PIDS[@]}" 2>/dev/null || true
  fi
}

# A TCP port nothing listens on now (the kernel's choice: bind to port 0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# redis-server on a free port, without persistence, logging into <dir>/redis-<port>.log;
# returns once it answers PING.
start_redis() {
  local dir=$1; shift
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize no "$@" \
    > "$dir/redis-$REDIS_PORT.log" 2>&1 &
  REDIS_PID=$!
  STARTED_PIDS+=("$REDIS_PID")
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
}

# The release binary (target/release, or $CARGO_TARGET_DIR/release, or $RATELIMITER_BIN to run
# another build) on free ports (JSON logs into <log>, emptied first so that an earlier run's
# address is never read); returns once it logged the addresses it listens on.
start_service() {
  local log=$1; shift
  : > "$log"
  "${RATELIMITER_BIN:-${CARGO_TARGET_DIR:-target}/release/ratelimiter}" --http-addr 127.0.0.1:0 \
    --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json "$@" > "$log" 2>&1 &
  SERVICE_PID=$!
  STARTED_PIDS+=("$SERVICE_PID")
  local line=""
  until line=$(grep -m1 '"message":"listening"' "$log"); do
    kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  HTTP_ADDR=$(echo "$line" | grep -o '"http":"[0-9.:]*"' | cut -d'"' -f4)
  GRPC_ADDR=$(echo "$line" | grep -o '"grpc":"[0-9.:]*"' | cut -d'"' -f4)
}

# The Envoy binary: $ENVOY_BIN, or the one `make setup` installs into .tools/envoy-venv.
envoy_bin() {
  if [ -n "${ENVOY_BIN:-}" ]; then
    echo "$ENVOY_BIN"
    return
  fi
  local found
  for found in .tools/envoy-venv/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$found" ]; then
      echo "$found"
      return
    fi
  done
  echo "Envoy not found: set ENVOY_BIN, or run make setup (it installs .tools/envoy-venv)" >&2
  return 1
}

# Envoy running <config> with the ports of its `port_value:` lines rewritten: 10000 (listener)
# and 9901 (admin) to free ports, 50051 (ratelimiter's gRPC) to <grpc_port>; the config it
# ran and its log go into <dir>; returns once its admin says ready.
#   start_envoy <config> <dir> <grpc_port>  -> ENVOY_PID, ENVOY_URL (http://<listener>)
start_envoy() {
  local config=$1 dir=$2 grpc_port=$3 bin listen admin port
  bin=$(envoy_bin)
  listen=$(free_port)
  admin=$(free_port)
  for port in 10000 9901 50051; do
    grep -q "port_value: $port\$" "$config" || { echo "$config: no 'port_value: $port' line" >&2; return 1; }
  done
  sed -e "s/port_value: 10000\$/port_value: $listen/" -e "s/port_value: 9901\$/port_value: $admin/" \
    -e "s/port_value: 50051\$/port_value: $grpc_port/" "$config" > "$dir/envoy.yaml"
  "$bin" -c "$dir/envoy.yaml" --disable-hot-restart --log-level warn \
    --concurrency "${ENVOY_CONCURRENCY:-2}" > "$dir/envoy.log" 2>&1 &
  ENVOY_PID=$!
  STARTED_PIDS+=("$ENVOY_PID")
  until curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; do
    kill -0 "$ENVOY_PID" 2>/dev/null || { cat "$dir/envoy.log" >&2; return 1; }
    sleep 0.1
  done
  ENVOY_URL="http://127.0.0.1:$listen"
}

# Stops one process this script started (e.g. an Envoy before the next config's).
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A Redis Cluster of three masters and no replicas, each redis-server on a free port (and a
# free cluster-bus port), without persistence, logging into <dir>/redis-<port>.log, joined by
# `redis-cli --cluster create`; returns once every node says cluster_state:ok (fails after 30 s).
# CLUSTER_PORTS: the three ports; CLUSTER_URL: redis+cluster://… naming every node.
start_cluster() {
  local dir=$1 port bus tries=0
  CLUSTER_PORTS=()
  for _ in 1 2 3; do
    port=$(free_port); bus=$(free_port)
    redis-server --port "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 5000 \
      --save '' --appendonly no --daemonize no > "$dir/redis-$port.log" 2>&1 &
    STARTED_PIDS+=("$!")
    CLUSTER_PORTS+=("$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
  done
  redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 \
    --cluster-yes > "$dir/cluster-create.log" 2>&1
  for port in "${CLUSTER_PORTS[@]}"; do
    until redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
      tries=$((tries + 1))
      [ "$tries" -lt 300 ] || { echo "the Redis Cluster did not form: see $dir" >&2; return 1; }
      sleep 0.1
    done
  done
  local nodes=("${CLUSTER_PORTS[@]/#/127.0.0.1:}")
  CLUSTER_URL="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
}

# ghz: $GHZ_BIN, or .tools/bin/ghz, built from its pinned module (scripts/go-tools/ghz) the
# first time.
ghz_bin() {
  if [ -n "${GHZ_BIN:-}" ]; then
    [ -x "$GHZ_BIN" ] || { echo "GHZ_BIN=$GHZ_BIN is not an executable" >&2; return 1; }
    echo "$GHZ_BIN"
    return
  fi
  [ -x .tools/bin/ghz ] || bash scripts/go-tool.sh ghz .tools/bin/ghz >&2
  echo .tools/bin/ghz
}

# ShouldRateLimit requests of domain `bench` (k6/bench-config) for ghz, written to <file>: a
# JSON array cycling over 1,000 `user` values (ghz sends an array's messages round robin), or
# with [value], that one `user` alone.
bench_requests() {
  local request='{domain: "bench", hits_addend: 1, descriptors: [{entries: [{key: "user", value: $v}]}]}'
  if [ $# -gt 1 ]; then
    jq -nc --arg v "$2" "$request" > "$1"
  else
    jq -nc "[range(1000) | (\"user-\\(.)\") as \$v | $request]" > "$1"
  fi
}

# CPU clock ticks (utime + stime) the given processes used so far, summed (fields 14 and 15
# of /proc/<pid>/stat, counted after the command name, which may hold spaces).
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$total"
}
