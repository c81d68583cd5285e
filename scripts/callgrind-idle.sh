#!/usr/bin/env bash
# Counts the instructions voxd spends per inbound audio frame of an idle session: voxd runs under
# valgrind's callgrind, `voxd bench --idle` streams silence from N sessions, and instructions are
# counted over a fixed window once every session is up. Instruction counts repeat from run to run
# whatever else the machine does, so two builds compare where CPU samples on a shared machine are
# too noisy. User space only: the kernel's share (reads, ACKs, epoll) is not counted.
#
#   scripts/callgrind-idle.sh                    # this tree's release build
#   BIN=/path/to/other/voxd scripts/callgrind-idle.sh   # another build, for a before/after
#   FLOOR=1 scripts/callgrind-idle.sh            # the floor server (bench/examples/floor.rs)
#
# Prints the instruction total, the part in memset (valgrind counts each byte of a `rep stosb`
# as an instruction, so a large memset is overstated; it is shown apart), and per frame.
# Needs: valgrind, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
WINDOW=${WINDOW:-20}     # seconds counted
PORT=${PORT:-18766}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=./target/release/voxd
fi
TOOL=${TOOL:-./target/release/voxd}
[ -x "$TOOL" ] || cargo build --release --quiet
out="$OUT/callgrind-idle.out"
rm -f "$out" "$out".*

if [ -n "${FLOOR:-}" ]; then
  cargo build --release --quiet -p voxd-bench --example floor
  server_cmd=(./target/release/examples/floor 127.0.0.1:"$PORT")
else
  server_cmd=("$BIN" serve --config config.toml --listen 127.0.0.1:"$PORT" --max-sessions 1000)
fi
RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$out" "${server_cmd[@]}" >"$OUT/callgrind-idle.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.2
done
taskset -c 1 "$TOOL" bench --server "ws://127.0.0.1:$PORT/ws" -c "$SESSIONS" \
  --duration $((WINDOW + 30)) --ramp-up 2 --idle --quiet >"$OUT/callgrind-idle.bench.txt" 2>&1 &
tool=$!
sleep 10
callgrind_control -i on "$server" >/dev/null
sleep "$WINDOW"
callgrind_control -i off "$server" >/dev/null
callgrind_control -d "$server" >/dev/null
kill "$tool" 2>/dev/null || true
wait "$tool" 2>/dev/null || true
kill -TERM "$server"
wait "$server" 2>/dev/null || true
trap - EXIT

dump=$(ls "$out".* | head -1)
total=$(awk '/^totals:/ {print $2}' "$dump")
memset=$(callgrind_annotate "$dump" 2>/dev/null | awk '/memset/ && !m {gsub(",", "", $1); m = $1} END {print m + 0}')
memset=${memset:-0}
frames=$((SESSIONS * 50 * WINDOW))
echo "instructions: $total over ${WINDOW} s of $SESSIONS idle sessions ($frames frames)"
echo "in memset:    $memset"
echo "per frame:    $(( total / frames )) ($(( (total - memset) / frames )) without memset)"
echo "profile:      callgrind_annotate --inclusive=yes $dump"
