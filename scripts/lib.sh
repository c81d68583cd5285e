# Shared by the bench scripts (source it after setting BIN, PORT and OUT): a fresh server pinned
# to CPU 0, its RSS, and the machine's description.

server_pid=""

# start_server CONFIG: `voxd serve` with CONFIG on PORT, pinned to CPU 0; returns
# once it listens.
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
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# The machine and the commit, into $OUT/machine.txt and on stdout.
describe_machine() {
  { nproc; grep -m1 "model name" /proc/cpuinfo; date -u; git rev-parse --short HEAD; } \
    | tee "$OUT/machine.txt"
}

# idle_rss NAME N CMD...: runs CMD (a bench of N idle callers, 15 s) in the background, reads the
# server's RSS before it and 20 s into it, and prints the RSS per session.
idle_rss() {
  local name=$1 n=$2 base loaded b
  shift 2
  base=$(rss_kib "$server_pid")
  "$@" &
  b=$!
  sleep 20
  loaded=$(rss_kib "$server_pid")
  wait "$b"
  echo "$name: rss_base_kib=$base rss_loaded_kib=$loaded per_session_kib=$(( (loaded - base) / n ))" \
    | tee "$OUT/$name-rss.txt"
}
