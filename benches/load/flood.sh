#!/usr/bin/env bash
# Issue 9, "the budget is what the process really holds": flood the `flood` example (a
# catch-all answering 4 KiB bodies behind a 64 MiB MemoryStore) with random paths, every
# one a miss that is stored and evicts an older entry, and compare what the process holds
# (RSS) with the store's budget.
#
#   benches/load/flood.sh                          # 1 000 000 requests, 50 connections
#   FLOOD_REQUESTS=300000 benches/load/flood.sh    # quicker
#   MALLOC_ARENA_MAX=2 benches/load/flood.sh       # any environment reaches the server
#
# Phases: (1) the idle server's RSS (the baseline); (2) FLOOD_BYPASS_REQUESTS requests of
# the same answers around the cache (`/__bypass/...`): what the server holds under this
# load with no cache at all; (3) the flood, RSS sampled every 0.5 s; (4) the store's stats,
# the peak (VmHWM), and the RSS after `malloc_trim(0)` (what glibc held free).
# Prints the figures and `ratio = (peak - baseline) / budget` (target <= 1.15).
#
# Settings (environment):
#   FLOOD_REQUESTS         requests in the flood (default 1000000)
#   FLOOD_CONNECTIONS      oha connections (default 50)
#   FLOOD_BYPASS_REQUESTS  requests of the uncached phase (default 100000; 0 skips it)
#   FLOOD_PORT             loopback port (default 3200)
#   FLOOD_MAX_BYTES        the store's budget (default 67108864)
#   FLOOD_BODY_BYTES       body size (default 4096)
#   FLOOD_BUILD            `0` skips `cargo build` (default: build)
#   FLOOD_OUT              where results go (default: a new temporary directory)
#
# Needs: cargo, curl, jq, oha (`cargo install oha --locked`), Linux /proc.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${FLOOD_REQUESTS:-1000000}
CONNECTIONS=${FLOOD_CONNECTIONS:-50}
BYPASS_REQUESTS=${FLOOD_BYPASS_REQUESTS:-100000}
PORT=${FLOOD_PORT:-3200}
export FLOOD_MAX_BYTES=${FLOOD_MAX_BYTES:-67108864}
export FLOOD_BODY_BYTES=${FLOOD_BODY_BYTES:-4096}
OUT=${FLOOD_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/trc-flood.XXXXXX")}
mkdir -p "$OUT"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BASE=http://127.0.0.1:$PORT
# oha's --rand-regex-url reads the whole URL as a regex, with `.` taken literally.
BASE_RE=$BASE

log() { echo "== $*" >&2; }
die() { echo "flood: $*" >&2; exit 1; }
for tool in cargo curl jq oha; do
  command -v "$tool" >/dev/null || die "$tool is required (oha: cargo install oha --locked)"
done

if [ "${FLOOD_BUILD:-1}" != 0 ]; then
  log "building the flood example (release)"
  cargo build --release --example flood
fi

"$TARGET_DIR/release/examples/flood" "127.0.0.1:$PORT" >"$OUT/server.log" 2>&1 &
SERVER=$!
SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  kill "$SERVER" 2>/dev/null
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$BASE/__stats" 2>/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || die "the server exited: $(cat "$OUT/server.log")"
  sleep 0.1
done
curl -fsS -o /dev/null "$BASE/__stats" || die "the server did not come up"

# status_bytes FIELD: a /proc/$SERVER/status field (VmRSS, VmHWM) in bytes.
status_bytes() { awk -v f="$1:" '$1 == f { print $2 * 1024 }' "/proc/$SERVER/status"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

baseline=$(status_bytes VmRSS)
log "idle: VmRSS $(mib "$baseline") MiB"

bypass_hwm=""
if [ "$BYPASS_REQUESTS" -gt 0 ]; then
  log "uncached: $BYPASS_REQUESTS requests to $BASE/__bypass/<random>, $CONNECTIONS connections"
  oha -n "$BYPASS_REQUESTS" -c "$CONNECTIONS" --no-tui --output-format json \
    --rand-regex-url "$BASE_RE/__bypass/[a-z0-9]{16}" >"$OUT/bypass.json"
  bypass_hwm=$(status_bytes VmHWM)
  log "uncached: VmHWM $(mib "$bypass_hwm") MiB, $(jq -r '.summary.requestsPerSec | floor' "$OUT/bypass.json") requests/s"
fi

# RSS every 0.5 s during the flood: seconds since start, VmRSS bytes.
(
  start=$(date +%s.%N)
  while kill -0 "$SERVER" 2>/dev/null; do
    echo "$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }') $(status_bytes VmRSS)"
    sleep 0.5
  done
) >"$OUT/rss.tsv" 2>/dev/null &
SAMPLER=$!

log "flood: $REQUESTS requests to $BASE/<random 16 chars>, $CONNECTIONS connections"
oha -n "$REQUESTS" -c "$CONNECTIONS" --no-tui --output-format json \
  --rand-regex-url "$BASE_RE/[a-z0-9]{16}" >"$OUT/flood.json"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""

curl -fsS "$BASE/__stats" >"$OUT/stats.json"
peak=$(status_bytes VmHWM)
end_rss=$(status_bytes VmRSS)
curl -fsS "$BASE/__trim" >"$OUT/trim.json"
trimmed=$(jq -r .rss_after "$OUT/trim.json")

budget=$FLOOD_MAX_BYTES
stat() { jq -r ".cache.$1" "$OUT/stats.json"; }
ratio() { awk -v p="$1" -v b="$2" -v m="$budget" 'BEGIN { printf "%.3f", (p - b) / m }'; }
codes=$(jq -c '.statusCodeDistribution' "$OUT/flood.json")
errors=$(jq -c '.errorDistribution' "$OUT/flood.json")
{
  echo "flood: $REQUESTS requests, $CONNECTIONS connections, ${FLOOD_BODY_BYTES}-byte bodies; $(oha --version); $(nproc) CPUs; MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-unset}"
  echo "requests/s:         $(jq -r '.summary.requestsPerSec | floor' "$OUT/flood.json") (status codes $codes, errors $errors)"
  echo "budget:             $budget ($(mib "$budget") MiB)"
  echo "store:              $(stat bytes) bytes counted, $(stat entries) entries, $(stat evictions) evictions, $(stat stores) stores, $(stat misses) misses, $(stat hits) hits"
  echo "baseline RSS:       $baseline ($(mib "$baseline") MiB, idle)"
  [ -n "$bypass_hwm" ] && echo "uncached peak RSS:  $bypass_hwm ($(mib "$bypass_hwm") MiB, same load without the cache)"
  echo "peak RSS (VmHWM):   $peak ($(mib "$peak") MiB)"
  echo "RSS at the end:     $end_rss ($(mib "$end_rss") MiB); after malloc_trim(0): $trimmed ($(mib "$trimmed") MiB)"
  echo "ratio:              (peak - baseline) / budget = $(ratio "$peak" "$baseline") (target <= 1.15)"
  [ -n "$bypass_hwm" ] && echo "                    (peak - uncached peak) / budget = $(ratio "$peak" "$bypass_hwm")"
  echo "                    (trimmed end - baseline) / budget = $(ratio "$trimmed" "$baseline")"
} | tee "$OUT/summary.txt"
log "results in $OUT (summary.txt, rss.tsv, stats.json, oha JSON)"
