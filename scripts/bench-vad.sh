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

source scripts/lib.sh
cleanup() { stop_server; rm -f .bench-vad-*.toml; }
trap cleanup EXIT
bench() { # name, config, then voxd bench arguments
  local name=$1 cfg=$2; shift 2
  taskset -c 1 "$BIN" bench --server "$URL" --server-pid "$server_pid" --mock-config "$cfg" \
    --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  grep -E "^==|overhead \(server\)|barge-in reaction" "$OUT/$name.txt" | sed "s/^/$name: /"
}

describe_machine
for e in $ENGINES; do
  cfg=".bench-vad-$e.toml"
  if [ -n "$IDLE" ]; then
    start_server "$cfg"
    idle_rss "idle-$e" "$IDLE" bench "idle-$e" "$cfg" -c "$IDLE" --idle --duration 15 --ramp-up 10
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
