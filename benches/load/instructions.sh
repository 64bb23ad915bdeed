#!/usr/bin/env bash
# Instructions per request of the ceiling server's routes under callgrind: a repeatable
# figure on a noisy machine (instructions, not seconds; user space only, no kernel).
#
#   benches/load/instructions.sh            # 2000 sequential requests per route
#   INSTR_REQUESTS=500 benches/load/instructions.sh
#
# Builds `benches/load/ceiling.rs` in release mode with `--features redis`, starts a throwaway
# redis-server on a free loopback port and the ceiling server under valgrind, warms every
# route, then for each route sends INSTR_REQUESTS requests one at a time with oha and reads
# the instructions callgrind counted meanwhile (a dump per route). Prints a markdown table.
# Needs: valgrind (callgrind_control), redis-server, oha, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${INSTR_REQUESTS:-2000}
ROUTES=(static cached redis-raw redis-cached)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/trc-instr.XXXXXX")
TARGET_DIR=${CARGO_TARGET_DIR:-target}

for tool in valgrind callgrind_control redis-server oha curl; do
  command -v "$tool" >/dev/null || { echo "instructions: $tool is required" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --features redis --example ceiling >&2
REDIS_PORT=$(free_port)
PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --dir "$OUT" >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
cleanup() {
  [ -n "${VG_PID:-}" ] && kill "$VG_PID" 2>/dev/null || true
  kill "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT
sleep 0.5

# Under valgrind the first Redis answers are slow: a generous deadline keeps the cache on
# Redis (the ceiling server refuses to start on the fallback).
CACHE_REDIS_TIMEOUT_MS=2000 CEILING_ADDR="127.0.0.1:$PORT" \
  CEILING_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
  "$TARGET_DIR/release/examples/ceiling" >"$OUT/ceiling.log" 2>&1 &
VG_PID=$!
for _ in $(seq 1 120); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/static" && break
  sleep 1
done
for route in "${ROUTES[@]}"; do
  for _ in $(seq 1 50); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/$route"; done
done
curl -fsi "http://127.0.0.1:$PORT/redis-cached" | grep -qi '^x-cache: HIT' \
  || { echo "instructions: /redis-cached is not a hit" >&2; exit 1; }

# Each dump holds what was counted since the previous one.
dump() {
  callgrind_control -d "$VG_PID" >/dev/null
  sleep 1
  grep '^totals' "$(ls -t "$OUT"/cg.out.* | head -1)" | awk '{print $2}'
}
dump >/dev/null
echo "| Route | Instructions per request | vs its baseline |"
echo "|---|---:|---:|"
declare -A per
for route in "${ROUTES[@]}"; do
  oha -n "$REQUESTS" -c 1 --no-tui "http://127.0.0.1:$PORT/$route" >/dev/null
  per[$route]=$(( $(dump) / REQUESTS ))
done
for route in "${ROUTES[@]}"; do
  case $route in
    cached) base=static ;;
    redis-cached) base=redis-raw ;;
    *) base="" ;;
  esac
  ratio=""
  [ -n "$base" ] && ratio=$(awk -v a="${per[$route]}" -v b="${per[$base]}" 'BEGIN{printf "%.2f× /%s", a/b, "'"$base"'"}')
  echo "| \`/$route\` | ${per[$route]} | $ratio |"
done
