#!/usr/bin/env bash
# The floor under voxd's CPU figures: the same load against a server that does nothing with it
# (bench/examples/floor.rs), then against voxd, alternating.
#
#   scripts/floor.sh            # 1000 and 2000 sessions
#   POINTS="2000" RUNS=2 scripts/floor.sh
#
# Each point runs four loads, server on CPU 0 and load tool on CPU 1 (taskset):
#   floor idle   the floor; callers stream silence (`voxd bench --idle`)
#   voxd idle    voxd; the same callers (server VAD over silence)
#   floor talk   the floor sending every caller 60 ms of audio every 60 ms (all callers listening)
#   voxd mix     voxd; the sustained scenario mix of scripts/bench.sh
# and prints the server's CPU in steady state (the median of 3 s samples taken after the ramp),
# with voxd's server overhead, barge-in reaction and connect percentiles.
# Reports go to bench-results/floor-*.{txt,json}. Needs: taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

POINTS=${POINTS:-"1000 2000"}
RUNS=${RUNS:-1}
DURATION=${DURATION:-30}
PORT=${PORT:-18767}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
cargo build --release --quiet
cargo build --release --quiet -p voxd-bench --example floor
VOXD=./target/release/voxd
FLOOR=./target/release/examples/floor
HZ=$(getconf CLK_TCK)

# The CPU time (user + system ticks) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Samples a process's CPU every 3 s, COUNT times; prints the median in % of one core.
median_cpu() {
  local pid=$1 count=$2 prev cur samples=()
  prev=$(ticks "$pid")
  for _ in $(seq "$count"); do
    sleep 3
    cur=$(ticks "$pid" 2>/dev/null) || break
    samples+=($(( (cur - prev) * 100 / (HZ * 3) )))
    prev=$cur
  done
  printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'
}

# run NAME LOAD SERVER N [bench args]: one load against one server.
run() {
  local name=$1 load=$2 server=$3 n=$4; shift 4
  local ramp=$(( n / 100 + 5 )) server_pid
  case $server in
    floor) taskset -c 0 "$FLOOR" 127.0.0.1:"$PORT" >"$OUT/$name.server.log" 2>&1 & ;;
    "floor --talk") taskset -c 0 "$FLOOR" 127.0.0.1:"$PORT" --talk >"$OUT/$name.server.log" 2>&1 & ;;
    voxd) RUST_LOG=warn taskset -c 0 "$VOXD" serve --config config.toml --listen 127.0.0.1:"$PORT" \
            --max-sessions 20000 >"$OUT/$name.server.log" 2>&1 & ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.1
  done
  (sleep $(( ramp + 2 )); median_cpu "$server_pid" $(( (DURATION - 4) / 3 )) >"$OUT/$name.cpu") &
  local sampler=$!
  taskset -c 1 "$VOXD" bench --server "ws://127.0.0.1:$PORT/ws" -c "$n" --duration "$DURATION" \
    --ramp-up "$ramp" --server-pid "$server_pid" --mock-config config.toml --quiet \
    --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1 || true
  wait "$sampler" || true
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  local failed connect overhead barge
  failed=$(grep -o 'failed [0-9]*' "$OUT/$name.txt" | head -1 | cut -d' ' -f2)
  connect=$(awk '$1 == "connect" {print $5 " / " $7}' "$OUT/$name.txt")
  overhead=$(awk '$1 == "overhead" && $2 == "(server)" {print $6 " / " $7 " / " $8}' "$OUT/$name.txt")
  barge=$(awk '$1 == "barge-in" {print $6 " / " $8}' "$OUT/$name.txt")
  printf '| %s | %s | %s | %s %% | %s | %s | %s | %s |\n' "$n" "$load" "$server" "$(cat "$OUT/$name.cpu")" \
    "${failed:-–}" "${connect:-–}" "${overhead:-–}" "${barge:-–}"
}

echo "| sessions | load | server | CPU (steady median) | failed turns | connect p50 / p99 | overhead (server) p50 / p95 / p99 | barge-in p50 / p99 |"
echo "|---|---|---|---|---|---|---|---|"
for n in $POINTS; do
  for r in $(seq "$RUNS"); do
    run "floor-$n-idle-floor-$r" idle floor "$n" --idle
    run "floor-$n-idle-voxd-$r" idle voxd "$n" --idle
    run "floor-$n-talk-floor-$r" "all listening" "floor --talk" "$n" --idle
    run "floor-$n-mix-voxd-$r" "scenario mix" voxd "$n"
  done
done
