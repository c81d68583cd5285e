#!/usr/bin/env bash
# The per-session cost of each client protocol, one run: /ws, the OpenAI Realtime protocol
# (/v1/realtime) and Twilio Media Streams (/twilio). For each, idle callers (server VAD over
# silence: RSS and CPU per session) and real-speech callers taking simple turns only (every
# protocol plays the same turns, so the figures compare the protocols, not the mix). Two rounds,
# the protocols alternating. Server pinned to CPU 0, the load tool to CPU 1, a fresh server per
# point. Writes bench-results/protocols/ and prints the summary lines that BENCHMARKS.md ("The
# client protocols") quotes.
#
#   scripts/bench-protocols.sh                           # the suite (about 8 minutes)
#   ROUNDS=1 SPEECH=100 scripts/bench-protocols.sh       # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOCOLS=${PROTOCOLS-"ws realtime twilio"}
ROUNDS=${ROUNDS:-2}
IDLE=${IDLE-1000}
SPEECH=${SPEECH-300}
DURATION=${DURATION:-30}
PORT=${PORT:-18767}
OUT=${OUT:-bench-results/protocols}
CONFIG=${CONFIG:-config.toml}

mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/voxd

server_pid=""
start_server() {
  RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" \
    --max-sessions 20000 > "$OUT/server.out" 2> "$OUT/server.err" &
  server_pid=$!
  until grep -q "voxd listening" "$OUT/server.out" 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.err"; exit 1; }
    sleep 0.01
  done
}
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
url() {
  case $1 in
    ws) echo "ws://127.0.0.1:$PORT/ws" ;;
    realtime) echo "ws://127.0.0.1:$PORT/v1/realtime?model=bench" ;;
    twilio) echo "ws://127.0.0.1:$PORT/twilio" ;;
  esac
}
bench() { # name, protocol, then voxd bench arguments
  local name=$1 p=$2; shift 2
  taskset -c 1 "$BIN" bench --server "$(url "$p")" --protocol "$p" --server-pid "$server_pid" \
    --mock-config "$CONFIG" --server-vad --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  grep -E "^==|^ttft |overhead \(server\)" "$OUT/$name.txt" | sed "s/^/$name: /"
}

{ nproc; grep -m1 "model name" /proc/cpuinfo; date -u; git rev-parse --short HEAD; } | tee "$OUT/machine.txt"
for round in $(seq "$ROUNDS"); do
  for p in $PROTOCOLS; do
    if [ -n "$IDLE" ]; then
      start_server
      base=$(rss_kib "$server_pid")
      bench "idle-$p-$round" "$p" -c "$IDLE" --idle --duration 15 --ramp-up 10 &
      b=$!
      sleep 20
      loaded=$(rss_kib "$server_pid")
      wait "$b"
      echo "idle-$p-$round: rss_base_kib=$base rss_loaded_kib=$loaded per_session_kib=$(( (loaded - base) / IDLE ))" | tee "$OUT/idle-rss-$p-$round.txt"
      stop_server
    fi
    for n in $SPEECH; do
      start_server
      # Simple turns for every protocol, as BENCHMARKS.md's table was measured.
      bench "speech-$p-$n-$round" "$p" -c "$n" --duration "$DURATION" --ramp-up 10 \
        --tools 0 --interruptions 0 --false-alarms 0
      stop_server
    done
  done
done
echo "results in $OUT/"
