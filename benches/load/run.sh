#!/usr/bin/env bash
# Load tests with oha: the portal's dashboard uncached and cached (memory, Redis), the cache
# against its physical ceilings (a static; one raw Redis GET), syncs during load, and Redis
# killed during load. Prints a markdown table (and keeps it, with the raw oha JSON and the
# server logs, in $LOAD_OUT).
#
#   benches/load/run.sh                     # 10 s per scenario
#   LOAD_DURATION=5s benches/load/run.sh    # quicker
#
# Redis: with REDIS_URL set, scenarios 1 and 2 use that Redis (under a namespace of their
# own); otherwise, with redis-server on PATH, a throwaway one on a free loopback port. The
# kill scenario always starts (and SIGKILLs) a throwaway redis-server of its own. Without
# either, or with LOAD_REDIS=off, the Redis rows say why they were skipped.
#
# Settings (environment):
#   LOAD_DURATION      oha duration per scenario (default 10s)
#   LOAD_CONNECTIONS   concurrent connections (default 50)
#   LOAD_ROUNDS        rounds of the ceiling pair, alternating routes; best of each (default 3)
#   LOAD_BASE_PORT     first of six loopback ports used (default 3100); throwaway Redis
#                      servers take the first free ports from LOAD_BASE_PORT + 10
#   LOAD_OUT           where results go (default: a new temporary directory)
#   PORTAL_SEED_VOUCHERS  vouchers in the fresh database (default 1000000)
#   REDIS_URL          an existing Redis for scenarios 1 and 2 (default: a throwaway one)
#   LOAD_REDIS         `off` skips the Redis scenarios (default: run them when possible)
#   LOAD_NEAR_LEASE_MS the near cache's lease on the near-cache row (default 200)
#   LOAD_ONLY_HITS     `1`: only the hit rows of scenario 1 (memory, Redis, Redis + near
#                      cache), alternating for LOAD_ROUNDS rounds, best of each
#
# Needs: cargo, curl, jq; installs oha with `cargo install oha --locked` when missing;
# redis-server for the Redis scenarios.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${LOAD_DURATION:-10s}
CONNECTIONS=${LOAD_CONNECTIONS:-50}
ROUNDS=${LOAD_ROUNDS:-3}
BASE_PORT=${LOAD_BASE_PORT:-3100}
SEED=${PORTAL_SEED_VOUCHERS:-1000000}
OUT=${LOAD_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/trc-load.XXXXXX")}
mkdir -p "$OUT"
CACHED_PORT=$BASE_PORT
UNCACHED_PORT=$((BASE_PORT + 1))
CEILING_PORT=$((BASE_PORT + 2))
REDIS_PORTAL_PORT=$((BASE_PORT + 3))
KILL_PORTAL_PORT=$((BASE_PORT + 4))
NEAR_PORTAL_PORT=$((BASE_PORT + 5))
TARGET_DIR=${CARGO_TARGET_DIR:-target}

log() { echo "== $*" >&2; }
die() { echo "load: $*" >&2; exit 1; }

for tool in cargo curl jq; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
if ! command -v oha >/dev/null; then
  log "installing oha (cargo install oha --locked; several minutes on a small machine)"
  cargo install oha --locked
fi

# Which Redis, if any: "external" (REDIS_URL), "throwaway" (redis-server), or "" with the
# reason in $redis_skip.
redis_mode="" redis_skip=""
if [ "${LOAD_REDIS:-on}" = off ]; then
  redis_skip="skipped: LOAD_REDIS=off"
elif [ -n "${REDIS_URL:-}" ]; then
  redis_mode=external
elif command -v redis-server >/dev/null; then
  redis_mode=throwaway
else
  redis_skip="skipped: no Redis (set REDIS_URL or install redis-server)"
fi
kill_skip=""
if [ -z "$redis_mode" ]; then
  kill_skip=$redis_skip
elif ! command -v redis-server >/dev/null; then
  kill_skip="skipped: needs redis-server on PATH to start a Redis it may kill"
fi
FEATURES=()
[ -n "$redis_mode" ] && FEATURES=(--features redis)

log "building the portal, the ceiling server and the stale-read checker (release${FEATURES[*]:+, ${FEATURES[*]}})"
cargo build --release -p portal "${FEATURES[@]}" --bin portal --bin stale_check
cargo build --release "${FEATURES[@]}" --example ceiling
BIN=$TARGET_DIR/release
EXAMPLES=$TARGET_DIR/release/examples

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_for URL: until it answers 200 (seeding a fresh database takes a few seconds).
wait_for() {
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  die "$1 did not come up; see the logs in $OUT"
}

# A loopback port nothing listens on, from $1 up.
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# start_redis NAME: a throwaway redis-server (no persistence) on a free port; sets
# STARTED_REDIS_URL (not printed: a subshell would lose the PID that cleanup needs).
start_redis() {
  local name=$1 port
  port=$(free_port $((BASE_PORT + 10)))
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/$name.pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      STARTED_REDIS_URL="redis://127.0.0.1:$port/0"
      return 0
    fi
    sleep 0.05
  done
  die "redis-server did not start on port $port; see $OUT/$name.log"
}

# start NAME PORT [VAR=value ...]: start the portal in the background.
start_portal() {
  local name=$1 port=$2
  shift 2
  env PORTAL_DB="$OUT/portal.db" PORTAL_ADDR="127.0.0.1:$port" PORTAL_SEED_VOUCHERS="$SEED" \
    PORTAL_SYNC_INTERVAL_SECS=0 RUST_LOG=warn,portal=info "$@" \
    "$BIN/portal" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/$name.pid"
  wait_for "http://127.0.0.1:$port/health"
}

rm -f "$OUT"/portal.db*
log "starting the portal on a fresh database ($SEED vouchers)"
start_portal portal-cached "$CACHED_PORT"
start_portal portal-uncached "$UNCACHED_PORT" PORTAL_CACHE=off
CACHED=http://127.0.0.1:$CACHED_PORT
UNCACHED=http://127.0.0.1:$UNCACHED_PORT

GUID=$(curl -fsS "$CACHED/api/companies" | jq -r '.companies[0].guid')
SYNC_GUID=$(curl -fsS "$CACHED/api/companies" | jq -r '.companies[1].guid')
DASHBOARD=/api/dashboard/$GUID
curl -fsS -o "$OUT/dashboard.json" "$CACHED$DASHBOARD" # also warms the cache
[ "$(curl -fsS -o /dev/null -D - "$CACHED$DASHBOARD" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')" = HIT ] ||
  die "the second dashboard read was not a cache hit"

# x_cache URL: the X-Cache header of one GET.
x_cache() { curl -fsS -o /dev/null -D - "$1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}'; }
# backend BASE: the portal's cache backend, from /health.
backend() { curl -fsS "$1/health" | jq -r '.cache.backend'; }
# warm BASE PATH: read until a hit (a Redis write lands just after its answer).
warm() {
  for _ in $(seq 1 100); do
    [ "$(x_cache "$1$2")" = HIT ] && return 0
    sleep 0.05
  done
  die "$1$2 never became a cache hit"
}

REDIS_NAMESPACE=portal CEILING_NAMESPACE=ceiling REDIS_PROCS=""
if [ -n "$redis_mode" ]; then
  if [ "$redis_mode" = external ]; then
    LOAD_REDIS_URL=$REDIS_URL
    # Someone else's Redis: keys of our own, left to expire.
    REDIS_NAMESPACE=trc-load-$$ CEILING_NAMESPACE=trc-load-ceiling-$$
  else
    start_redis redis
    LOAD_REDIS_URL=$STARTED_REDIS_URL
    REDIS_PROCS=redis
  fi
  log "starting a portal caching in Redis ($redis_mode: $(sed 's|//[^@/]*@|//***@|' <<<"$LOAD_REDIS_URL"))"
  start_portal portal-redis "$REDIS_PORTAL_PORT" REDIS_ENABLED=true REDIS_URL="$LOAD_REDIS_URL" \
    CACHE_NAMESPACE="$REDIS_NAMESPACE"
  REDIS_PORTAL=http://127.0.0.1:$REDIS_PORTAL_PORT
  [ "$(backend "$REDIS_PORTAL")" = redis ] || die "the Redis portal is not on Redis: see $OUT/portal-redis.log"
  curl -fsS -o /dev/null "$REDIS_PORTAL$DASHBOARD"
  warm "$REDIS_PORTAL" "$DASHBOARD"
  # Its own computation (computed_at differs), of the same data.
  [ "$(curl -fsS "$REDIS_PORTAL$DASHBOARD" | jq -c '[.guid, .alter_id, .vouchers]')" = \
    "$(jq -c '[.guid, .alter_id, .vouchers]' "$OUT/dashboard.json")" ] || die "the Redis portal's dashboard differs"
  # The same with the near cache (L1) in front of Redis, in a namespace of its own.
  log "starting a portal caching in Redis with a near cache (lease ${LOAD_NEAR_LEASE_MS:-200} ms)"
  start_portal portal-near "$NEAR_PORTAL_PORT" REDIS_ENABLED=true REDIS_URL="$LOAD_REDIS_URL" \
    CACHE_NAMESPACE="$REDIS_NAMESPACE-near" CACHE_NEAR_LEASE_MS="${LOAD_NEAR_LEASE_MS:-200}"
  NEAR_PORTAL=http://127.0.0.1:$NEAR_PORTAL_PORT
  [ "$(backend "$NEAR_PORTAL")" = redis ] || die "the near-cache portal is not on Redis: see $OUT/portal-near.log"
  curl -fsS -o /dev/null "$NEAR_PORTAL$DASHBOARD"
  warm "$NEAR_PORTAL" "$DASHBOARD"
fi


log "starting the ceiling server with the same $(wc -c <"$OUT/dashboard.json") dashboard bytes"
CEILING_BODY="$OUT/dashboard.json" CEILING_ADDR="127.0.0.1:$CEILING_PORT" \
  CEILING_REDIS_URL="${LOAD_REDIS_URL:-}" CACHE_NAMESPACE="$CEILING_NAMESPACE" \
  "$EXAMPLES/ceiling" >"$OUT/ceiling.log" 2>&1 &
PIDS+=($!)
echo $! >"$OUT/ceiling.pid"
CEILING=http://127.0.0.1:$CEILING_PORT
wait_for "$CEILING/static"
curl -fsS -o /dev/null "$CEILING/cached"
cmp -s "$OUT/dashboard.json" <(curl -fsS "$CEILING/cached") || die "the ceiling does not serve the dashboard bytes"
if [ -n "$redis_mode" ]; then
  cmp -s "$OUT/dashboard.json" <(curl -fsS "$CEILING/redis-raw") || die "/redis-raw does not serve the dashboard bytes"
  curl -fsS -o /dev/null "$CEILING/redis-cached"
  warm "$CEILING" /redis-cached
  cmp -s "$OUT/dashboard.json" <(curl -fsS "$CEILING/redis-cached") || die "/redis-cached does not serve the dashboard bytes"
fi

# Server CPU time (user + system, in clock ticks) of the processes in $OUT/NAME.pid, for
# each NAME in the list $1 (a server and the Redis it uses count together).
cpu_ticks() {
  local total=0 name ticks
  for name in $1; do
    ticks=$(awk '{ print $14 + $15 }' "/proc/$(cat "$OUT/$name.pid")/stat" 2>/dev/null) || { echo ""; return; }
    total=$((total + ticks))
  done
  echo "$total"
}
# oha NAME URL SERVERS: one run; the JSON report goes to $OUT/NAME.json and the CPU time
# SERVERS spent meanwhile to $OUT/NAME.cpu. CPU per request is steadier than requests/s
# on a small or shared machine, where neighbours make throughput swing.
oha_run() {
  log "oha $1: $2 ($DURATION, $CONNECTIONS connections)"
  local before after
  before=$(cpu_ticks "$3")
  oha -z "$DURATION" -c "$CONNECTIONS" --no-tui --output-format json "$2" >"$OUT/$1.json"
  after=$(cpu_ticks "$3")
  if [ -n "$before" ] && [ -n "$after" ]; then echo "$((after - before))" >"$OUT/$1.cpu"; fi
}
# Fields of a report: requests/s, p50 ms, p99 ms, failures (non-2xx answers and errors
# other than requests cut off by the end of the run).
rps() { jq -r '.summary.requestsPerSec' "$OUT/$1.json"; }
p50() { jq -r '.latencyPercentiles.p50 * 1000' "$OUT/$1.json"; }
p99() { jq -r '.latencyPercentiles.p99 * 1000' "$OUT/$1.json"; }
failures() {
  jq -r '([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0)
       + ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0)' \
    "$OUT/$1.json"
}
# Server CPU microseconds per answered request, or "–" where /proc is missing.
cpu_us() {
  [ -f "$OUT/$1.cpu" ] || { echo "–"; return; }
  awk -v t="$(cat "$OUT/$1.cpu")" -v hz="$(getconf CLK_TCK)" \
    -v n="$(jq '[.statusCodeDistribution[]] | add // 0' "$OUT/$1.json")" \
    'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "–" }'
}
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
row() { # row LABEL NAME NOTE
  echo "| $1 | $(fmt "$(rps "$2")" 0) | $(fmt "$(p50 "$2")" 2) | $(fmt "$(p99 "$2")" 2) | $(failures "$2") | $(cpu_us "$2") | $3 |"
}

# Only the hit rows: memory, Redis, Redis through the near cache, alternating; best of each.
if [ "${LOAD_ONLY_HITS:-}" = 1 ]; then
  [ -n "$redis_mode" ] || die "LOAD_ONLY_HITS needs Redis: $redis_skip"
  for round in $(seq 1 "$ROUNDS"); do
    oha_run "memory-$round" "$CACHED$DASHBOARD" portal-cached
    oha_run "redis-$round" "$REDIS_PORTAL$DASHBOARD" "portal-redis $REDIS_PROCS"
    oha_run "near-$round" "$NEAR_PORTAL$DASHBOARD" "portal-near $REDIS_PROCS"
  done
  {
    echo "| Scenario | Requests/s | p50 ms | p99 ms | Failures | Server CPU µs/req | Ratio / notes |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for round in $(seq 1 "$ROUNDS"); do
      m=$(rps "memory-$round")
      row "round $round: memory hit" "memory-$round" "100 %"
      row "round $round: Redis hit" "redis-$round" "$(percent "$(rps "redis-$round")" "$m") % of memory"
      row "round $round: Redis hit through the near cache" "near-$round" "**$(percent "$(rps "near-$round")" "$m") %** of memory (target ≥ 90 %)"
    done
    echo
    echo "near-cache portal: $(curl -fsS "$NEAR_PORTAL/api/cache/stats" | jq -c '{hits, l1_hits, redis_hits, lease_lapses, store_errors, backend}')"
  } | tee "$OUT/hits.md"
  exit 0
fi

# 1. The dashboard: every request to SQLite, then memory hits through the whole portal.
oha_run uncached "$UNCACHED$DASHBOARD" portal-uncached
oha_run memory "$CACHED$DASHBOARD" portal-cached
# counter BASE NAME: one counter of /api/cache/stats (or of the ceiling's /stats .redis).
counter() { curl -fsS "$1" | jq -r "$2"; }
if [ -n "$redis_mode" ]; then
  errors_before=$(counter "$REDIS_PORTAL/api/cache/stats" .store_errors)
  oha_run redis "$REDIS_PORTAL$DASHBOARD" "portal-redis $REDIS_PROCS"
  redis_errors=$(($(counter "$REDIS_PORTAL/api/cache/stats" .store_errors) - errors_before))
  redis_backend_after=$(backend "$REDIS_PORTAL")
  l1_before=$(counter "$NEAR_PORTAL/api/cache/stats" .l1_hits)
  oha_run near "$NEAR_PORTAL$DASHBOARD" "portal-near $REDIS_PROCS"
  near_l1_hits=$(($(counter "$NEAR_PORTAL/api/cache/stats" .l1_hits) - l1_before))
  near_lapses=$(counter "$NEAR_PORTAL/api/cache/stats" .lease_lapses)
fi

# 2. The ceiling pairs, alternating so both see the same machine state; best of each.
greater() { awk -v a="$(rps "$1")" -v b="$(rps "$2")" 'BEGIN { exit !(a > b) }'; }
best_static=1 best_cached=1 per_round=()
best_raw=1 best_rcached=1 per_round_redis=()
[ -n "$redis_mode" ] && ceiling_errors_before=$(counter "$CEILING/stats" .redis.store_errors)
for round in $(seq 1 "$ROUNDS"); do
  oha_run "ceiling-static-$round" "$CEILING/static" ceiling
  oha_run "ceiling-cached-$round" "$CEILING/cached" ceiling
  if greater "ceiling-static-$round" "ceiling-static-$best_static"; then best_static=$round; fi
  if greater "ceiling-cached-$round" "ceiling-cached-$best_cached"; then best_cached=$round; fi
  per_round+=("$(percent "$(rps "ceiling-cached-$round")" "$(rps "ceiling-static-$round")") %")
  if [ -n "$redis_mode" ]; then
    oha_run "ceiling-raw-$round" "$CEILING/redis-raw" "ceiling $REDIS_PROCS"
    oha_run "ceiling-rcached-$round" "$CEILING/redis-cached" "ceiling $REDIS_PROCS"
    if greater "ceiling-raw-$round" "ceiling-raw-$best_raw"; then best_raw=$round; fi
    if greater "ceiling-rcached-$round" "ceiling-rcached-$best_rcached"; then best_rcached=$round; fi
    per_round_redis+=("$(percent "$(rps "ceiling-rcached-$round")" "$(rps "ceiling-raw-$round")") %")
  fi
done
if [ -n "$redis_mode" ]; then
  ceiling_errors=$(($(counter "$CEILING/stats" .redis.store_errors) - ceiling_errors_before))
  ceiling_backend_after=$(counter "$CEILING/stats" .redis.backend)
fi

# 3. A sync every second during load: oha reads the synced company's dashboard while the
# checker syncs it and verifies every read it makes against the last completed sync.
stats_before=$(curl -fsS "$CACHED/api/cache/stats")
oha_run sync-load "$CACHED/api/dashboard/$SYNC_GUID" portal-cached &
OHA_PID=$!
secs=${DURATION%s}
[[ "$secs" =~ ^[0-9]+$ ]] || secs=10
"$BIN/stale_check" --url "$CACHED" --guid "$SYNC_GUID" --seconds "$secs" --interval-ms 1000 --readers 4 \
  >"$OUT/stale_check.json" 2>"$OUT/stale_check.log" || true
wait "$OHA_PID"
stats_after=$(curl -fsS "$CACHED/api/cache/stats")
hits=$(($(jq .hits <<<"$stats_after") - $(jq .hits <<<"$stats_before")))
misses=$(($(jq .misses <<<"$stats_after") - $(jq .misses <<<"$stats_before")))
check() { jq -r ".$1 // \"?\"" "$OUT/${2:-stale_check}.json" 2>/dev/null || echo "?"; }
stale=$(check stale)

# 3b. The same on the Redis portal, with another company: the portal invalidates through
# Redis, and every checked read is compared against the last completed sync.
stale_redis=0
if [ -n "$redis_mode" ]; then
  SYNC_GUID_REDIS=$(curl -fsS "$CACHED/api/companies" | jq -r '.companies[2].guid')
  curl -fsS -o /dev/null "$REDIS_PORTAL/api/dashboard/$SYNC_GUID_REDIS"
  rstats_before=$(curl -fsS "$REDIS_PORTAL/api/cache/stats")
  oha_run sync-load-redis "$REDIS_PORTAL/api/dashboard/$SYNC_GUID_REDIS" "portal-redis $REDIS_PROCS" &
  OHA_PID=$!
  "$BIN/stale_check" --url "$REDIS_PORTAL" --guid "$SYNC_GUID_REDIS" --seconds "$secs" --interval-ms 1000 --readers 4 \
    >"$OUT/stale_check_redis.json" 2>"$OUT/stale_check_redis.log" || true
  wait "$OHA_PID"
  rstats_after=$(curl -fsS "$REDIS_PORTAL/api/cache/stats")
  rhits=$(($(jq .hits <<<"$rstats_after") - $(jq .hits <<<"$rstats_before")))
  rmisses=$(($(jq .misses <<<"$rstats_after") - $(jq .misses <<<"$rstats_before")))
  rsync_errors=$(($(jq .store_errors <<<"$rstats_after") - $(jq .store_errors <<<"$rstats_before")))
  stale_redis=$(check stale stale_check_redis)
fi

# 4. Redis killed during load: a portal on a throwaway Redis of its own, read under load;
# a third of the way in, SIGKILL the Redis. Every answer must still be a 2xx.
if [ -z "$kill_skip" ]; then
  start_redis redis-kill
  KILL_REDIS_URL=$STARTED_REDIS_URL
  start_portal portal-kill "$KILL_PORTAL_PORT" REDIS_ENABLED=true REDIS_URL="$KILL_REDIS_URL"
  KILL_PORTAL=http://127.0.0.1:$KILL_PORTAL_PORT
  [ "$(backend "$KILL_PORTAL")" = redis ] || die "the kill-test portal is not on Redis: see $OUT/portal-kill.log"
  curl -fsS -o /dev/null "$KILL_PORTAL$DASHBOARD"
  warm "$KILL_PORTAL" "$DASHBOARD"
  oha_run redis-kill "$KILL_PORTAL$DASHBOARD" "portal-kill" &
  OHA_PID=$!
  kill_after=$(awk -v s="$secs" 'BEGIN { printf "%.1f", s / 3 }')
  sleep "$kill_after"
  kill -KILL "$(cat "$OUT/redis-kill.pid")"
  wait "$(cat "$OUT/redis-kill.pid")" 2>/dev/null || true # reaped quietly, no "Killed" line
  log "redis-server SIGKILLed ${kill_after} s into the run"
  wait "$OHA_PID"
  kill_backend=$(backend "$KILL_PORTAL")
  kill_stats=$(curl -fsS "$KILL_PORTAL/api/cache/stats")
fi

# CPU per request of one ceiling route over all its rounds.
route_cpu_us() {
  local ticks=0 requests=0 round
  for round in $(seq 1 "$ROUNDS"); do
    [ -f "$OUT/ceiling-$1-$round.cpu" ] || { echo ""; return; }
    ticks=$((ticks + $(cat "$OUT/ceiling-$1-$round.cpu")))
    requests=$((requests + $(jq '[.statusCodeDistribution[]] | add // 0' "$OUT/ceiling-$1-$round.json")))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}
static_cpu=$(route_cpu_us static)
cached_cpu=$(route_cpu_us cached)
if [ -n "$static_cpu" ] && [ -n "$cached_cpu" ]; then
  cpu_note="; server CPU per request over all rounds: $cached_cpu µs vs $static_cpu µs static ($(percent "$static_cpu" "$cached_cpu") % of the static's requests per CPU-second)"
else
  cpu_note=""
fi
uncached_rps=$(rps uncached)
memory_rps=$(rps memory)
static_rps=$(rps "ceiling-static-$best_static")
cached_rps=$(rps "ceiling-cached-$best_cached")
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || uname -p)
if [ -n "$redis_mode" ]; then
  redis_rps=$(rps redis)
  raw_rps=$(rps "ceiling-raw-$best_raw")
  rcached_rps=$(rps "ceiling-rcached-$best_rcached")
  # A throwaway Redis's CPU counts with the server's; an external one's cannot be read.
  if [ -n "$REDIS_PROCS" ]; then cpu_who="server + Redis"; else cpu_who="server (not Redis: external)"; fi
  raw_cpu=$(route_cpu_us raw)
  rcached_cpu=$(route_cpu_us rcached)
  if [ -n "$raw_cpu" ] && [ -n "$rcached_cpu" ]; then
    rcpu_note="; $cpu_who CPU per request over all rounds: $rcached_cpu µs vs $raw_cpu µs raw ($(percent "$raw_cpu" "$rcached_cpu") % of the raw GET's requests per CPU-second)"
  else
    rcpu_note=""
  fi
  fallback_note() { # fallback_note ERRORS BACKEND: what went wrong with Redis, if anything
    if [ "$1" = 0 ] && [ "$2" = redis ]; then echo "on Redis throughout (0 store errors)"; else
      echo "**not all on Redis**: $1 store errors, backend after: $2"; fi
  }
  redis_version=$(redis-server --version 2>/dev/null | awk '{ print $3 }' | sed 's/^v=//')
fi

{
  echo "Machine: $cpu, $(nproc) CPUs, $(uname -sr); $(oha --version); $(rustc --version)${redis_mode:+; Redis ${redis_version:-?} ($redis_mode), build with ${FEATURES[*]}}."
  echo "Load: oha, $CONNECTIONS connections, $DURATION per run, HTTP/1.1 keep-alive, oha on the same machine."
  echo "Body: one company's dashboard, $(wc -c <"$OUT/dashboard.json") bytes of JSON ($SEED vouchers seeded)."
  if [ -n "$REDIS_PROCS" ]; then
    echo "Server CPU: the server process's, plus the throwaway redis-server's on rows 1–3 that use Redis (not on row 4)."
  fi
  echo
  echo "| Scenario | Requests/s | p50 ms | p99 ms | Failures | Server CPU µs/req | Ratio / notes |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  row "1. Dashboard, cache off (SQLite on every request)" uncached "1×"
  row "1. Dashboard, memory hit (whole portal)" memory \
    "**$(ratio "$memory_rps" "$uncached_rps")×** uncached (target ≥ 100×)"
  if [ -n "$redis_mode" ]; then
    row "1. Dashboard, Redis hit (whole portal)" redis \
      "**$(ratio "$redis_rps" "$uncached_rps")×** uncached (target ≥ 100×); $(percent "$redis_rps" "$memory_rps") % of the memory hit; $(fallback_note "$redis_errors" "$redis_backend_after")"
    row "1. Dashboard, Redis hit through the near cache (lease ${LOAD_NEAR_LEASE_MS:-200} ms)" near \
      "**$(percent "$(rps near)" "$memory_rps") %** of the memory hit (target ≥ 90 %); $near_l1_hits of its hits from the near cache, $near_lapses lease lapses"
  else
    echo "| 1. Dashboard, Redis hit | – | – | – | – | – | $redis_skip |"
  fi
  row "2. Ceiling: same bytes from a static" "ceiling-static-$best_static" "100 %"
  row "2. Ceiling: same bytes through \`CacheLayer\` (memory hit)" "ceiling-cached-$best_cached" \
    "**$(percent "$cached_rps" "$static_rps") %** of static (target ≥ 90 %); best of $ROUNDS runs each; pairs per round: $(IFS=/; echo "${per_round[*]}" | sed 's|/|, |g')$cpu_note"
  if [ -n "$redis_mode" ]; then
    row "2. Ceiling: same bytes from one raw Redis \`GET\`" "ceiling-raw-$best_raw" "100 %"
    row "2. Ceiling: same bytes through \`CacheLayer\` (Redis hit, one \`HGET\`)" "ceiling-rcached-$best_rcached" \
      "**$(percent "$rcached_rps" "$raw_rps") %** of the raw GET (target ≥ 80 %); best of $ROUNDS runs each; pairs per round: $(IFS=/; echo "${per_round_redis[*]}" | sed 's|/|, |g')$rcpu_note; $(fallback_note "$ceiling_errors" "$ceiling_backend_after")"
  else
    echo "| 2. Ceiling: one raw Redis GET | – | – | – | – | – | $redis_skip |"
  fi
  row "3. Dashboard while its company syncs every 1 s (memory)" sync-load \
    "hit ratio **$(percent "$hits" "$((hits + misses))") %** ($hits hits, $misses misses); $(check syncs) syncs; **$stale stale** of $(check reads) checked reads"
  if [ -n "$redis_mode" ]; then
    row "3. Dashboard while its company syncs every 1 s (Redis)" sync-load-redis \
      "hit ratio **$(percent "$rhits" "$((rhits + rmisses))") %** ($rhits hits, $rmisses misses, $rsync_errors store errors); $(check syncs stale_check_redis) syncs; **$stale_redis stale** of $(check reads stale_check_redis) checked reads"
  fi
  if [ -z "$kill_skip" ]; then
    row "4. Dashboard (Redis hit) with Redis SIGKILLed $kill_after s into the run" redis-kill \
      "**$(failures redis-kill) non-2xx or failed** (target 0); slowest $(fmt "$(jq -r '.summary.slowest * 1000' "$OUT/redis-kill.json")" 1) ms; backend after: $kill_backend; $(jq .store_errors <<<"$kill_stats") store errors, $(jq .misses <<<"$kill_stats") misses, $(jq .hits <<<"$kill_stats") hits over the portal's life"
  else
    echo "| 4. Redis killed during load | – | – | – | – | – | $kill_skip |"
  fi
} | tee "$OUT/table.md"

log "results in $OUT (table.md, oha JSON, server logs)"
[ "$stale" = 0 ] || die "stale reads detected (or the checker failed): see $OUT/stale_check.log"
[ "$stale_redis" = 0 ] || die "stale reads on Redis detected (or the checker failed): see $OUT/stale_check_redis.log"
