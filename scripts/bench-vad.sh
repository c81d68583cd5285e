#!/usr/bin/env bash
# Silero against webrtc-vad under load, one run: idle sessions (RSS and CPU), real-speech callers
# with server VAD, and noisy callers (noise between turns). Server pinned to CPU 0, the load tool
# to CPU 1, a fresh server per point. Writes bench-results/vad/ and prints the summary lines that
# BENCHMARKS.md ("Silero VAD under load") quotes.
#
#   scripts/bench-vad.sh                                  # the suite (about 10 minutes)
#   ENGINES=silero NOISY="250" scripts/bench-vad.sh       # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES=${ENGINES-"silero webrtc"}
IDLE=${IDLE-2000}
SPEECH=${SPEECH-500}
NOISY=${NOISY-"500 250"}
DURATION=${DURATION:-30}
PORT=${PORT:-18766}
OUT=${OUT:-bench-results/vad}

mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/voxd
URL="ws://127.0.0.1:$PORT/ws"
# The engine's config beside config.toml, so that its relative paths (the fixtures) resolve.
for e in $ENGINES; do
  sed "s/^engine = \"silero\"/engine = \"$e\"/" config.toml > ".bench-vad-$e.toml"
done

server_pid=""
start_server() {
  RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$1" --listen "127.0.0.1:$PORT" \
    --max-sessions 20000 > "$OUT/server.out" 2> "$OUT/server.err" &
  server_pid=$!
  until grep -q "voxd listening" "$OUT/server.out" 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/server.err"; exit 1; }
    sleep 0.01
  done
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
cleanup() { stop_server; rm -f .bench-vad-*.toml; }
trap cleanup EXIT
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
bench() { # name, config, then voxd bench arguments
  local name=$1 cfg=$2; shift 2
  taskset -c 1 "$BIN" bench --server "$URL" --server-pid "$server_pid" --mock-config "$cfg" \
    --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  grep -E "^==|overhead \(server\)|barge-in reaction" "$OUT/$name.txt" | sed "s/^/$name: /"
}

{ nproc; grep -m1 "model name" /proc/cpuinfo; date -u; git rev-parse --short HEAD; } | tee "$OUT/machine.txt"
for e in $ENGINES; do
  cfg=".bench-vad-$e.toml"
  if [ -n "$IDLE" ]; then
    start_server "$cfg"
    base=$(rss_kib "$server_pid")
    bench "idle-$e" "$cfg" -c "$IDLE" --idle --duration 15 --ramp-up 10 &
    b=$!
    sleep 20
    loaded=$(rss_kib "$server_pid")
    wait "$b"
    echo "idle-$e: rss_base_kib=$base rss_loaded_kib=$loaded per_session_kib=$(( (loaded - base) / IDLE ))" | tee "$OUT/idle-rss-$e.txt"
    stop_server
  fi
  for n in $SPEECH; do
    start_server "$cfg"
    bench "speech-$e-$n" "$cfg" -c "$n" --duration "$DURATION" --ramp-up 10 --server-vad
    stop_server
  done
  for n in $NOISY; do
    start_server "$cfg"
    bench "noisy-$e-$n" "$cfg" -c "$n" --duration "$DURATION" --ramp-up 10 --server-vad --noisy
    stop_server
  done
done
echo "results in $OUT/"
