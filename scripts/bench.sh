#!/usr/bin/env bash
# Benchmarks voxd on this machine: the server pinned to CPU 0, the load tool (`voxd bench`) pinned
# to CPU 1, loopback only, every run bounded in time. Writes raw results to bench-results/ and
# prints the figures that BENCHMARKS.md quotes.
#
#   scripts/bench.sh                      # the full suite (about 10 minutes)
#   POINTS="100 1000" DURATION=20 scripts/bench.sh   # a quicker subset
#
# Needs: a Rust toolchain, taskset (util-linux). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

POINTS=${POINTS-"100 500 1000 2000 4000"}
DURATION=${DURATION:-30}        # seconds of steady load per point (after the ramp-up)
IDLE_SESSIONS=${IDLE_SESSIONS:-2000}
PORT=${PORT:-18765}
OUT=${OUT:-bench-results}
CONFIG=${CONFIG:-config.toml}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/voxd
URL="ws://127.0.0.1:$PORT/ws"

server_pid=""
start_server() {
  local t0 t1
  t0=$(date +%s%N)
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" \
    --max-sessions 20000 > "$OUT/server.out" 2> "$OUT/server.err" &
  server_pid=$!
  until grep -q "voxd listening" "$OUT/server.out" 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.err"; exit 1; }
    sleep 0.001
  done
  t1=$(date +%s%N)
  echo "startup_ms=$(( (t1 - t0) / 1000000 ))" | tee -a "$OUT/startup.txt"
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

bench() { # name, then voxd bench arguments
  local name=$1; shift
  taskset -c "$CLIENT_CPU" "$BIN" bench --server "$URL" --server-pid "$server_pid" \
    --mock-config "$CONFIG" --quiet --json "$OUT/$name.json" --csv "$OUT/$name.csv" "$@" \
    | tee "$OUT/$name.txt"
}

echo "== machine"
{ nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2; uname -r; date -u; git rev-parse --short HEAD; } | tee "$OUT/machine.txt"

echo "== startup (5 runs)"
: > "$OUT/startup.txt"
for _ in 1 2 3 4 5; do start_server; stop_server; done

echo "== idle sessions: RSS per session"
start_server
base=$(rss_kib "$server_pid")
bench idle -c "$IDLE_SESSIONS" --idle --duration 15 --ramp-up 10 &
bpid=$!
sleep 20
loaded=$(rss_kib "$server_pid")
wait "$bpid"
echo "idle_sessions=$IDLE_SESSIONS rss_base_kib=$base rss_loaded_kib=$loaded per_session_kib=$(( (loaded - base) / IDLE_SESSIONS ))" | tee "$OUT/idle-rss.txt"
stop_server

for n in $POINTS; do
  echo "== sustained, client signals, $n sessions"
  start_server
  bench "signals-$n" -c "$n" --duration "$DURATION" --ramp-up $(( n / 100 + 5 ))
  stop_server
done

for n in ${VAD_POINTS-100 1000}; do
  echo "== sustained, server VAD over speech, $n sessions"
  start_server
  bench "vad-$n" -c "$n" --duration "$DURATION" --ramp-up $(( n / 100 + 5 )) --server-vad
  stop_server
done
for rate in ${TRANSCRIBE_RATES-50 200}; do
  echo "== POST /v1/transcribe at $rate requests/s (2.6 s WAV, mock ASR 50 ms)"
  start_server
  bench "transcribe-$rate" --mode transcribe --rate "$rate" --duration "$DURATION"
  stop_server
done
echo "results in $OUT/"
