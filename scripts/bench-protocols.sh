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

source scripts/lib.sh
trap stop_server EXIT
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

describe_machine
for round in $(seq "$ROUNDS"); do
  for p in $PROTOCOLS; do
    if [ -n "$IDLE" ]; then
      start_server "$CONFIG"
      idle_rss "idle-$p-$round" "$IDLE" \
        bench "idle-$p-$round" "$p" -c "$IDLE" --idle --duration 15 --ramp-up 10
      stop_server
    fi
    for n in $SPEECH; do
      start_server "$CONFIG"
      # Simple turns for every protocol, as BENCHMARKS.md's table was measured.
      bench "speech-$p-$n-$round" "$p" -c "$n" --duration "$DURATION" --ramp-up 10 \
        --tools 0 --interruptions 0 --false-alarms 0
      stop_server
    done
  done
done
echo "results in $OUT/"
