#!/usr/bin/env bash
# Fleet-wide single flight under load: N portal instances on one Redis, oha reading one
# company's dashboard on every instance, and the separate `sync` process syncing that
# company once a second (it imports into the shared database and invalidates
# `dashboard:{guid}*` through Redis, as the seed's pipeline does). For each N, with
# fleet-wide single flight on and off (`CACHE_FLEET_LEASE_MS=0`): origin fetches per sync
# (the sum over the instances of `CacheStats::stores`: only a fetch is stored), and the
# latency of every read (p50, p99, p99.9, slowest; the reads right after each sync are the
# ones that wait). Then, with it on, the stale-read checker over the whole fleet (syncs
# through one instance, reads of every instance checked against the last completed sync).
# Prints a markdown table and keeps it, with the raw oha JSON, in $FLEET_OUT.
#
#   benches/load/fleet.sh                                  # 1, 3 and 6 instances, 10 s each
#   FLEET_INSTANCES="3" FLEET_DURATION=5s benches/load/fleet.sh
#
# Settings (environment):
#   FLEET_INSTANCES    instance counts to run (default "1 3 6")
#   FLEET_DURATION     oha duration per run (default 10s)
#   FLEET_CONNECTIONS  oha connections per instance (default 4)
#   FLEET_BASE_PORT    first loopback port for the instances (default 3200)
#   FLEET_OUT          where results go (default: a new temporary directory)
#   PORTAL_SEED_VOUCHERS  vouchers in the fresh database (default 1000000: a dashboard
#                      query of tens of milliseconds, what makes a stampede costly)
#
# Needs: cargo, curl, jq, redis-server; installs oha with `cargo install oha --locked`.
set -euo pipefail
cd "$(dirname "$0")/../.."

INSTANCES=${FLEET_INSTANCES:-"1 3 6"}
DURATION=${FLEET_DURATION:-10s}
CONNECTIONS=${FLEET_CONNECTIONS:-4}
BASE_PORT=${FLEET_BASE_PORT:-3200}
SEED=${PORTAL_SEED_VOUCHERS:-1000000}
OUT=${FLEET_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/trc-fleet.XXXXXX")}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
secs=${DURATION%s}
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fleet: FLEET_DURATION must be whole seconds (10s)" >&2; exit 1; }

log() { echo "== $*" >&2; }
die() { echo "fleet: $*" >&2; exit 1; }
for tool in cargo curl jq redis-server; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
if ! command -v oha >/dev/null; then
  log "installing oha (cargo install oha --locked)"
  cargo install oha --locked
fi

log "building the portal, its sync process and the stale-read checker (release, redis)"
cargo build --release -p portal --features redis --bin portal --bin sync --bin stale_check
BIN=$TARGET_DIR/release

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}
wait_for() {
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$1 did not answer within 60 s"
}

# One Redis per run: counters and leases start clean.
start_redis() {
  local port
  port=$(free_port $((BASE_PORT + 50)))
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$OUT/redis-$1.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  REDIS_URL="redis://127.0.0.1:$port/0"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  die "redis-server did not start"
}

# start_portal NAME PORT [VAR=value ...]
start_portal() {
  local name=$1 port=$2
  shift 2
  env PORTAL_DB="$OUT/portal.db" PORTAL_ADDR="127.0.0.1:$port" PORTAL_SEED_VOUCHERS="$SEED" \
    PORTAL_SYNC_INTERVAL_SECS=0 RUST_LOG=warn "$@" \
    "$BIN/portal" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  wait_for "http://127.0.0.1:$port/health"
}

# The database, seeded once by a portal of its own (the runs share it, as a fleet does).
rm -f "$OUT"/portal.db*
log "seeding a fresh database ($SEED vouchers)"
start_portal seed "$(free_port "$BASE_PORT")"
kill "$LAST_PID" && wait "$LAST_PID" 2>/dev/null || true

sum() { local field=$1; shift; jq -s "map($field) | add" "$@"; }

run() { # run N on|off
  local n=$1 mode=$2 lease=2000 tag="$1-$2"
  [ "$mode" = off ] && lease=0
  start_redis "$tag"
  local ports=() pids=() i port
  for i in $(seq 1 "$n"); do
    port=$(free_port $((BASE_PORT + i)))
    start_portal "portal-$tag-$i" "$port" REDIS_ENABLED=true REDIS_URL="$REDIS_URL" \
      CACHE_FLEET_LEASE_MS="$lease"
    ports+=("$port")
    pids+=("$LAST_PID")
  done
  local guid
  guid=$(curl -fsS "http://127.0.0.1:${ports[0]}/api/companies" | jq -r '.companies[1].guid')
  local path="/api/dashboard/$guid"
  for port in "${ports[@]}"; do
    [ "$(curl -fsS "http://127.0.0.1:$port/health" | jq -r '.cache.backend')" = redis ] ||
      die "instance on $port is not on Redis: see $OUT"
    curl -fsS -o /dev/null -H "Host: portal.example" "http://127.0.0.1:$port$path"
  done
  for port in "${ports[@]}"; do curl -fsS "http://127.0.0.1:$port/api/cache/stats" >"$OUT/before-$tag-$port.json"; done

  local ohas=()
  for port in "${ports[@]}"; do
    # The fleet's public host on every instance, as behind a load balancer: the host is
    # part of the key.
    oha -z "$DURATION" -c "$CONNECTIONS" --no-tui --output-format json --host portal.example \
      "http://127.0.0.1:$port$path" >"$OUT/oha-$tag-$port.json" 2>/dev/null &
    ohas+=($!)
  done
  # The sync process, once a second, while the readers read.
  sleep 0.5
  local syncs=0 started=$SECONDS
  while [ $((SECONDS - started)) -lt $((secs - 1)) ]; do
    env PORTAL_DB="$OUT/portal.db" REDIS_ENABLED=true REDIS_URL="$REDIS_URL" RUST_LOG=error \
      "$BIN/sync" "$guid" >>"$OUT/sync-$tag.log" 2>&1 || die "the sync process failed: $OUT/sync-$tag.log"
    syncs=$((syncs + 1))
    sleep 1
  done
  for pid in "${ohas[@]}"; do wait "$pid"; done
  # A fetch begun by the last sync's readers has stored by now.
  sleep 0.5
  for port in "${ports[@]}"; do curl -fsS "http://127.0.0.1:$port/api/cache/stats" >"$OUT/after-$tag-$port.json"; done
  # Then the stale-read checker over the whole fleet: it syncs through the first instance
  # every 500 ms while its readers take turns over every instance; a read that began after
  # a sync completed must carry that sync's data, whichever instance answers it.
  local stale="–"
  if [ "$mode" = on ]; then
    local read_urls=()
    for port in "${ports[@]:1}"; do read_urls+=(--read-url "http://127.0.0.1:$port"); done
    "$BIN/stale_check" --url "http://127.0.0.1:${ports[0]}" "${read_urls[@]}" --host portal.example \
      --guid "$guid" --seconds "$secs" --interval-ms 500 --readers $((2 * n)) \
      >"$OUT/stale-$tag.json" 2>"$OUT/stale-$tag.log" || true
    stale="$(jq -r '.stale // "?"' "$OUT/stale-$tag.json") of $(jq -r '.reads // "?"' "$OUT/stale-$tag.json")"
  fi
  for pid in "${pids[@]}" "$REDIS_PID"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done

  local stores_before stores_after followers failures requests
  stores_before=$(sum .stores "$OUT"/before-"$tag"-*.json)
  stores_after=$(sum .stores "$OUT"/after-"$tag"-*.json)
  followers=$(( $(sum .fleet_followers "$OUT"/after-"$tag"-*.json) - $(sum .fleet_followers "$OUT"/before-"$tag"-*.json) ))
  requests=$(jq -s 'map(.statusCodeDistribution | to_entries | map(.value) | add) | add' "$OUT"/oha-"$tag"-*.json)
  failures=$(jq -s 'map((.statusCodeDistribution | to_entries | map(select(.key | startswith("2") | not) | .value) | add // 0) + (.errorDistribution | to_entries | map(select(.key | test("aborted due to deadline") | not) | .value) | add // 0)) | add' "$OUT"/oha-"$tag"-*.json)
  # Latency over every instance's reads: the worst instance's percentiles.
  local p50 p99 p999 slowest
  p50=$(jq -s 'map(.latencyPercentiles.p50) | max * 1000' "$OUT"/oha-"$tag"-*.json)
  p99=$(jq -s 'map(.latencyPercentiles.p99) | max * 1000' "$OUT"/oha-"$tag"-*.json)
  p999=$(jq -s 'map(.latencyPercentiles["p99.9"]) | max * 1000' "$OUT"/oha-"$tag"-*.json)
  slowest=$(jq -s 'map(.summary.slowest) | max * 1000' "$OUT"/oha-"$tag"-*.json)
  local fetches=$((stores_after - stores_before))
  printf '| %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$n" "$mode" "$syncs" "$fetches" \
    "$(awk -v f="$fetches" -v s="$syncs" 'BEGIN { printf "%.2f", s ? f / s : 0 }')" \
    "$followers" "$requests" "$failures" \
    "$(awk -v v="$p50" 'BEGIN { printf "%.2f", v }')" \
    "$(awk -v v="$p99" 'BEGIN { printf "%.2f", v }')" \
    "$(awk -v a="$p999" -v b="$slowest" 'BEGIN { printf "%.1f / %.1f", a, b }')" "$stale" | tee -a "$OUT/table.md"
}

{
  echo "Fleet-wide single flight: \`benches/load/fleet.sh\` ($DURATION per run, $CONNECTIONS oha connections per instance, a sync process once a second)"
  echo
  echo "| instances | fleet single flight | syncs | origin fetches | fetches per sync | fleet followers | reads | failed | p50 ms | p99 ms | p99.9 / slowest ms | stale of checked reads |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} | tee "$OUT/table.md"
for n in $INSTANCES; do
  run "$n" on
  if [ "$n" -gt 1 ]; then run "$n" off; fi
done
log "table and raw results in $OUT"
