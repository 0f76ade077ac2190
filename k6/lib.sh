# k6/lib.sh: what the load scripts of k6/ share (sourced, not run): starting redis-server and
# the release binary on free ports, reading the addresses they bound, and stopping everything
# a script started when it exits.
#   source k6/lib.sh; trap stop_all EXIT
#   start_redis <dir> [redis-server args...]   -> REDIS_PORT, REDIS_PID
#   start_service <log> [ratelimiter args...]  -> SERVICE_PID, HTTP_ADDR, GRPC_ADDR

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

# target/release/ratelimiter on free ports (JSON logs into <log>); returns once it logged the
# addresses it listens on.
start_service() {
  local log=$1; shift
  target/release/ratelimiter --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 --log-format json "$@" > "$log" 2>&1 &
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
