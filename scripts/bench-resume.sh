#!/usr/bin/env bash
# What reconnect-resume costs a session, one run: idle callers (RSS and CPU per session) and the
# sustained /ws load of BENCHMARKS.md (client signals, the classic mix: every answer streams its
# audio), each with resume on (`server.resume_window_s = 30`, the default: the audio frames sent
# are kept until surely played, and each session is registered for its client's claim) and off
# (`0`), alternating over two rounds. Server pinned to CPU 0, the load tool to CPU 1, a fresh
# server per point. Writes bench-results/resume/ and prints the summary lines that BENCHMARKS.md
# ("What resume costs") quotes.
#
#   scripts/bench-resume.sh                          # the suite (about 8 minutes)
#   ROUNDS=1 IDLE= LOAD=500 scripts/bench-resume.sh  # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
IDLE=${IDLE-2000}
LOAD=${LOAD-1000}
DURATION=${DURATION:-30}
PORT=${PORT:-18768}
OUT=${OUT:-bench-results/resume}

mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/voxd
URL="ws://127.0.0.1:$PORT/ws"
# Resume off: config.toml with a window of 0, beside it so that its relative paths resolve.
sed 's/^resume_window_s = 30/resume_window_s = 0/' config.toml > .bench-resume-off.toml
grep -q '^resume_window_s = 0' .bench-resume-off.toml

source scripts/lib.sh
cleanup() { stop_server; rm -f .bench-resume-off.toml; }
trap cleanup EXIT
config() { [ "$1" = on ] && echo config.toml || echo .bench-resume-off.toml; }
bench() { # name, config, then voxd bench arguments
  local name=$1 cfg=$2; shift 2
  taskset -c 1 "$BIN" bench --server "$URL" --server-pid "$server_pid" --mock-config "$cfg" \
    --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  grep -E "^==|overhead \(server\)|barge-in reaction" "$OUT/$name.txt" | sed "s/^/$name: /"
}

describe_machine
for round in $(seq "$ROUNDS"); do
  for mode in on off; do
    cfg=$(config "$mode")
    if [ -n "$IDLE" ]; then
      start_server "$cfg"
      idle_rss "idle-$mode-$round" "$IDLE" \
        bench "idle-$mode-$round" "$cfg" -c "$IDLE" --idle --duration 15 --ramp-up 10
      stop_server
    fi
    if [ -n "$LOAD" ]; then
      start_server "$cfg"
      bench "load-$mode-$round" "$cfg" -c "$LOAD" --duration "$DURATION" --ramp-up $(( LOAD / 100 + 5 ))
      stop_server
    fi
  done
done
echo "results in $OUT/"
