#!/usr/bin/env bash
# The soak run: N sessions with the default scenario mix for D seconds against a server whose mock
# providers inject faults in every stage (scripts/soak.toml). Samples the server's RSS every
# 10 s, then checks that
#   - the server never panicked,
#   - the RSS at the end is within a few percent of its plateau,
#   - every failed turn the load tool saw is accounted for by an injected fault.
# Writes raw results to bench-results/soak/ and prints the figures BENCHMARKS.md quotes.
#
#   scripts/soak.sh                           # 500 sessions for 10 minutes
#   SESSIONS=200 DURATION=120 scripts/soak.sh # a shorter one
#
# Needs: a Rust toolchain, taskset, curl. Server on CPU 0, load tool on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-500}
DURATION=${DURATION:-600}
PORT=${PORT:-18766}
OUT=${OUT:-bench-results/soak}
CONFIG=scripts/soak.toml

mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/voxd

RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" \
  --max-sessions 20000 > "$OUT/server.out" 2> "$OUT/server.err" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
until grep -q "voxd listening" "$OUT/server.out" 2>/dev/null; do
  kill -0 "$server" 2>/dev/null || { cat "$OUT/server.err"; exit 1; }
  sleep 0.05
done

: > "$OUT/rss.csv"
( t=0; while kill -0 "$server" 2>/dev/null; do
    echo "$t,$(awk '/VmRSS/ {print $2}' /proc/$server/status)" >> "$OUT/rss.csv"
    sleep 10; t=$((t + 10)); done ) &
sampler=$!

taskset -c 1 "$BIN" bench --server "ws://127.0.0.1:$PORT/ws" --server-pid "$server" \
  --mock-config "$CONFIG" -c "$SESSIONS" --duration "$DURATION" --ramp-up 10 --quiet \
  --json "$OUT/soak.json" --csv "$OUT/soak.csv" | tee "$OUT/soak.txt"

curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics.txt"
kill "$sampler" 2>/dev/null || true
kill -TERM "$server"; wait "$server" || true
trap - EXIT

echo "== panics"
if grep -qi "panicked" "$OUT/server.err" "$OUT/server.out"; then
  grep -i "panicked" "$OUT/server.err" "$OUT/server.out"; echo "FAIL: the server panicked"; exit 1
fi
echo "none"

echo "== RSS (KiB): plateau = median of the samples after the first third; end = the last sample under load"
python3 - "$OUT/rss.csv" <<'EOF'
import sys, statistics
rows = [tuple(map(int, l.split(','))) for l in open(sys.argv[1]) if l.strip()]
under_load = rows[:-1] if len(rows) > 3 else rows
later = [r for _, r in under_load[len(under_load) // 3:]]
plateau = statistics.median(later)
end = under_load[-1][1]
print(f"samples {len(rows)}, min {min(r for _, r in rows)}, max {max(r for _, r in rows)}, "
      f"plateau {plateau:.0f}, end {end} ({100 * (end - plateau) / plateau:+.1f} %)")
EOF

echo "== failures vs injected faults"
python3 - "$OUT/soak.json" "$OUT/metrics.txt" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
steps = report.get("steps", [report])
failures = {}
for s in steps:
    for k, v in s.get("failures", {}).items():
        failures[k] = failures.get(k, 0) + v
metrics = open(sys.argv[2]).read()
errors = {}
for m in re.finditer(r'voxd_provider_errors_total\{stage="(\w+)",provider="(\w+)"\} (\d+)', metrics):
    errors[m.group(1)] = errors.get(m.group(1), 0) + int(m.group(3))
turns = {}
for m in re.finditer(r'voxd_turns_total\{status="(\w+)"\} (\d+)', metrics):
    turns[m.group(1)] = int(m.group(2))
print("load tool failures:", failures or "none")
print("server provider errors by stage:", errors or "none")
print("server turns by status:", turns)
injected = ("asr_", "llm_", "tts_", "response \"failed\"")
unexplained = {k: v for k, v in failures.items() if not any(t in k for t in injected)}
print("failures not caused by an injected fault:", unexplained or "none")
sys.exit(1 if unexplained else 0)
EOF
