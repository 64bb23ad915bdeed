#!/usr/bin/env bash
# Redis Sentinel failover under HTTP load (issue #23): a primary, a replica and three
# sentinels on loopback; N portal instances on Redis through the sentinels; oha reading one
# company's dashboard and the company list on every instance; the separate `sync` process
# syncing that company once a second (import into the shared database, invalidation of
# `dashboard:{guid}*` through Redis); and the stale-read checker over the whole run (syncs
# through the first instance every 500 ms while its readers take turns over every
# instance). At a third of the run the primary is SIGKILLed; at two thirds it comes back,
# empty, as a replica of the promoted one. One run per fallback mode (`serve`, the
# default, and `bypass`), each on a fresh Sentinel set and fresh instances. Measured:
#
# - failover: kill → every sentinel names the replica, and it says it is the primary;
# - recovery: kill → every instance has left Redis (its circuit opened) and serves from
#   Redis again (`/api/cache/stats` `.backend`: `redis` → `falling_back` → `redis`,
#   polled in turn, about every 0.1 s per instance under load);
# - answers while falling back: the instances' hits + misses + bypasses while their
#   circuit was open: lower bound between the first and last samples seen falling back,
#   upper bound between the last sample on Redis before the kill and the first one back;
# - every request oha sent (failed = an error or a status other than 2xx), its latency, and
#   the stale reads `stale_check` saw (a read that began after a sync completed yet carries
#   older data), and the syncs done.
#
# Prints a markdown table and keeps it, with the raw oha JSON, the samples, the logs of
# every process and of each Redis node and sentinel, in $FAILOVER_OUT (one directory per
# run). Exits non-zero when a request failed or a read was stale in any run.
#
#   benches/load/failover.sh                                   # 2 instances, 20 s per run
#   FAILOVER_MODES=bypass FAILOVER_ROUNDS=2 FAILOVER_DURATION=40s benches/load/failover.sh
#
# Settings (environment):
#   FAILOVER_MODES         CACHE_FALLBACK_MODE of the instances, one run each (default
#                          "serve bypass")
#   FAILOVER_INSTANCES     portal instances (default 2)
#   FAILOVER_DURATION      oha duration per run (default 20s; whole seconds)
#   FAILOVER_CONNECTIONS   oha connections per instance on the dashboard (default 4; the
#                          company list gets half as many, at least 1)
#   FAILOVER_ROUNDS        failovers per run (default 1; 2: the old primary, once it has
#                          rejoined, is killed in turn). Kill k at (2k-1)/(2R+1) of the run,
#                          its rejoin at 2k/(2R+1).
#   FAILOVER_BASE_PORT     first loopback port tried (default 3300): instances from there,
#                          Redis nodes and sentinels from FAILOVER_BASE_PORT + 50
#   FAILOVER_OUT           where results go (default: a new temporary directory)
#   PORTAL_SEED_VOUCHERS   vouchers in the fresh database (default 200000)
#   FAILOVER_RUST_LOG      the instances' RUST_LOG (default warn; e.g.
#                          warn,tower_response_cache::store=debug says why a circuit opened)
#
# Needs: cargo, curl, jq, redis-server, redis-cli, timeout; installs oha with
# `cargo install oha --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C

MODES=${FAILOVER_MODES:-"serve bypass"}
INSTANCES=${FAILOVER_INSTANCES:-2}
DURATION=${FAILOVER_DURATION:-20s}
CONNECTIONS=${FAILOVER_CONNECTIONS:-4}
ROUNDS=${FAILOVER_ROUNDS:-1}
BASE_PORT=${FAILOVER_BASE_PORT:-3300}
SEED=${PORTAL_SEED_VOUCHERS:-200000}
RUST_LOG_PORTAL=${FAILOVER_RUST_LOG:-warn}
OUT=${FAILOVER_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/trc-failover.XXXXXX")}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
MASTER=trc
POLL=0.05
secs=${DURATION%s}

log() { echo "== $(date -u +%T) $*" >&2; }
die() { echo "failover: $*" >&2; exit 1; }
[[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -ge 6 ] || die "FAILOVER_DURATION must be whole seconds, at least 6s (20s)"
[[ "$INSTANCES" =~ ^[1-9][0-9]*$ ]] || die "FAILOVER_INSTANCES must be a positive number"
[[ "$ROUNDS" =~ ^[1-9]$ ]] || die "FAILOVER_ROUNDS must be 1 to 9"
for mode in $MODES; do
  case "$mode" in serve | bypass) ;; *) die "FAILOVER_MODES: $mode is neither serve nor bypass" ;; esac
done
for tool in cargo curl jq redis-server redis-cli timeout awk; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
if ! command -v oha >/dev/null; then
  log "installing oha (cargo install oha --locked)"
  cargo install oha --locked
fi

mkdir -p "$OUT"
# What an earlier run into the same directory left.
rm -rf "$OUT"/portal.db* "$OUT/seed.log" "$OUT/table.md" "$OUT/serve" "$OUT/bypass"

log "building the portal, its sync process and the stale-read checker (release, redis)"
cargo build --release -p portal --features redis --bin portal --bin sync --bin stale_check
BIN=$TARGET_DIR/release

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$1 did not answer within 60 s"
}
# Seconds from $1 to $2 (epoch seconds with a fraction, as $EPOCHREALTIME).
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# Sleep until $1 (epoch seconds with a fraction), if it is still ahead.
sleep_until() {
  local left
  left=$(awk -v t="$1" -v now="$EPOCHREALTIME" 'BEGIN { d = t - now; printf "%.3f", (d > 0 ? d : 0) }')
  sleep "$left"
}
rcli() { timeout 2 redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }
stats() { curl -fsS -m 2 "http://127.0.0.1:$1/api/cache/stats"; }
join() { local IFS=/; echo "$*" | sed 's|/| / |g'; }

# start_portal LOG PORT [VAR=value ...]
start_portal() {
  local name=$1 port=$2
  shift 2
  env PORTAL_DB="$OUT/portal.db" PORTAL_ADDR="127.0.0.1:$port" PORTAL_SEED_VOUCHERS="$SEED" \
    PORTAL_SYNC_INTERVAL_SECS=0 RUST_LOG="$RUST_LOG_PORTAL" "$@" \
    "$BIN/portal" >"$name" 2>&1 &
  PIDS+=($!)
  RUN_PIDS+=($!)
  LAST_PID=$!
  wait_for "http://127.0.0.1:$port/health"
}

# The database, seeded once by a portal of its own without Redis (the runs share it).
log "seeding a fresh database ($SEED vouchers)"
RUN_PIDS=()
start_portal "$OUT/seed.log" "$(free_port "$BASE_PORT")"
kill "$LAST_PID" && wait "$LAST_PID" 2>/dev/null || true

# --- The Sentinel set -----------------------------------------------------------------------
declare -A NODE_PID
# start_node PORT [--replicaof 127.0.0.1 PRIMARY]: an empty data node (no persistence).
start_node() {
  local port=$1
  shift
  mkdir -p "$DIR/redis/node-$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$DIR/redis/node-$port" \
    --save "" --appendonly no --repl-diskless-sync-delay 0 "$@" \
    >>"$DIR/redis/node-$port.log" 2>&1 &
  NODE_PID[$port]=$!
  PIDS+=($!)
  RUN_PIDS+=($!)
  for _ in $(seq 1 200); do
    listening "$port" && return 0
    sleep 0.05
  done
  die "redis-server on $port did not start: $DIR/redis/node-$port.log"
}
start_sentinel() { # PORT PRIMARY
  local port=$1
  mkdir -p "$DIR/redis/sentinel-$port"
  # Rewritten by the sentinel as it learns of replicas, peers and failovers.
  cat >"$DIR/redis/sentinel-$port/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
dir $DIR/redis/sentinel-$port
sentinel monitor $MASTER 127.0.0.1 $2 2
sentinel down-after-milliseconds $MASTER 500
sentinel failover-timeout $MASTER 2000
sentinel parallel-syncs $MASTER 1
EOF
  redis-server "$DIR/redis/sentinel-$port/sentinel.conf" --sentinel \
    >"$DIR/redis/sentinel-$port.log" 2>&1 &
  PIDS+=($!)
  RUN_PIDS+=($!)
  for _ in $(seq 1 200); do listening "$port" && return 0; sleep 0.05; done
  die "the sentinel on $port did not start: $DIR/redis/sentinel-$port.log"
}
named_primary() { rcli "$1" --raw SENTINEL get-master-addr-by-name "$MASTER" | sed -n 2p; }
# Whether the set is ready: every sentinel names $1, knows $2 as a replica that answers,
# and knows two other sentinels; $2 is in sync with $1.
set_ready() {
  local primary=$1 replica=$2 s
  rcli "$replica" INFO replication | grep -q "^master_link_status:up" || return 1
  for s in "${SENTINELS[@]}"; do
    [ "$(named_primary "$s")" = "$primary" ] || return 1
    rcli "$s" --json SENTINEL replicas "$MASTER" |
      jq -e --arg r "$replica" 'any(.[]; .port == $r and .flags == "slave")' >/dev/null || return 1
    [ "$(rcli "$s" --json SENTINEL sentinels "$MASTER" | jq length)" -ge 2 ] || return 1
  done
}
wait_ready() { # PRIMARY REPLICA SECONDS
  local until=$((SECONDS + $3))
  while ! set_ready "$1" "$2"; do
    [ "$SECONDS" -lt "$until" ] || return 1
    sleep 0.1
  done
}
# Wait until every sentinel names a primary other than $1 and that node says it is one.
wait_failover() {
  local old=$1 named s
  for _ in $(seq 1 1500); do
    named=$(for s in "${SENTINELS[@]}"; do named_primary "$s"; done | sort -u)
    if [ -n "$named" ] && [ "$named" != "$old" ] && [ "$(wc -l <<<"$named")" = 1 ] &&
      [ "$(rcli "$named" --raw ROLE | head -1)" = master ]; then
      NEW_PRIMARY=$named
      return 0
    fi
    sleep 0.02
  done
  return 1
}

# --- Load, syncs, the stale-read checker, the samples ---------------------------------
# Every instance's backend and counters, every 50 ms: "time <tab> instance <tab> stats".
monitor() {
  local i t s
  while [ ! -e "$DIR/.stop" ]; do
    for i in "${!PORTS[@]}"; do
      t=$EPOCHREALTIME
      s=$(curl -fsS -m 1 "http://127.0.0.1:${PORTS[$i]}/api/cache/stats" 2>/dev/null) || continue
      printf '%s\t%s\t%s\n' "$t" "$i" "$s"
    done
    sleep "$POLL"
  done >"$DIR/samples.tsv"
}
# The sync process once a second until $1 (epoch seconds):
# "time <tab> exit code <tab> how <tab> seconds it took".
sync_loop() {
  local deadline=$1 t rc how
  while awk -v d="$deadline" -v now="$EPOCHREALTIME" 'BEGIN { exit !(now < d) }'; do
    t=$EPOCHREALTIME
    rc=0
    # PORTAL_URL: when it cannot reach Redis, `sync` asks the first instance to sync.
    env PORTAL_DB="$OUT/portal.db" PORTAL_URL="http://127.0.0.1:${PORTS[0]}" "${REDIS_ENV[@]}" \
      RUST_LOG=warn "$BIN/sync" "$GUID" >"$DIR/sync-last.json" 2>"$DIR/sync-last.log" || rc=$?
    if grep -q "invalidated through Redis" "$DIR/sync-last.log"; then how=redis
    elif grep -q "asking the portal" "$DIR/sync-last.log"; then how=over-http
    elif grep -q "not enough replicas\|not replicated" "$DIR/sync-last.log"; then how=not-replicated
    elif grep -q "imported, but invalidating" "$DIR/sync-last.log"; then how=invalidation-failed
    else how=failed
    fi
    printf '%s\t%s\t%s\t%s\n' "$t" "$rc" "$how" "$(elapsed "$t" "$EPOCHREALTIME")" >>"$DIR/syncs.tsv"
    { echo "--- $(date -u +%T.%N) exit $rc ($how)"; cat "$DIR/sync-last.log"; } >>"$DIR/sync.log"
    sleep 1
  done
}
# For a kill at $1, up to $2: per instance, when it was first seen off Redis and back on
# it, and the answers meanwhile. Prints "recovery <tab> lower–upper answers <tab> instances
# never seen off Redis".
recovery() {
  awk -v tk="$1" -v tend="$2" -v n="${#PORTS[@]}" -F '\t' '
    $1 < tk { last_on[$2] = $4; openings[$2] = $5; next }
    $1 > tend { next }
    {
      i = $2
      if (back[i] != "") next
      if ($3 != "redis") {
        if (left[i] == "") { left[i] = $1; first_off[i] = $4 }
        last_off[i] = $4
      } else if (left[i] != "" || $5 > openings[i]) {
        # Back on Redis after leaving it (or after a circuit opening between two samples).
        if (left[i] == "") { left[i] = $1; first_off[i] = $4; last_off[i] = $4 }
        back[i] = $1; on_again[i] = $4
      }
    }
    END {
      worst = 0; lo = 0; hi = 0; missing = 0; never = 0
      for (i = 0; i < n; i++) {
        if (left[i] == "") { never++; continue }
        if (back[i] == "") { missing++; continue }
        if (back[i] - tk > worst) worst = back[i] - tk
        lo += last_off[i] - first_off[i]
        hi += on_again[i] - last_on[i]
      }
      if (missing) printf "not recovered (%d instances)\t%d–%d\t%d\n", missing, lo, hi, never
      else printf "%.2f\t%d–%d\t%d\n", worst, lo, hi, never
    }' "$DIR/backend.tsv"
}

STATUS=0
run() { # MODE
  local mode=$1 i k port pid
  DIR=$OUT/$mode
  mkdir -p "$DIR/redis"
  RUN_PIDS=()
  NODE_PID=()

  PRIMARY=$(free_port $((BASE_PORT + 50)))
  start_node "$PRIMARY"
  REPLICA=$(free_port $((PRIMARY + 1)))
  start_node "$REPLICA" --replicaof 127.0.0.1 "$PRIMARY"
  SENTINELS=()
  port=$REPLICA
  for _ in 1 2 3; do
    port=$(free_port $((port + 1)))
    start_sentinel "$port" "$PRIMARY"
    SENTINELS+=("$port")
  done
  local sentinel_list
  sentinel_list=$(printf '127.0.0.1:%s,' "${SENTINELS[@]}")
  log "$mode: Sentinel set: primary $PRIMARY, replica $REPLICA, sentinels ${SENTINELS[*]}"
  wait_ready "$PRIMARY" "$REPLICA" 60 || die "the Sentinel set was not ready within 60 s: see $DIR/redis"

  # The portal instances, on Redis through the sentinels.
  REDIS_ENV=(REDIS_ENABLED=true REDIS_SENTINELS="${sentinel_list%,}" REDIS_SENTINEL_MASTER="$MASTER")
  PORTS=()
  for i in $(seq 1 "$INSTANCES"); do
    port=$(free_port $((BASE_PORT + i)))
    start_portal "$DIR/portal-$i.log" "$port" "${REDIS_ENV[@]}" CACHE_FALLBACK_MODE="$mode"
    PORTS+=("$port")
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 300); do
      [ "$(stats "$port" | jq -r .backend)" = redis ] && break
      sleep 0.1
    done
    [ "$(stats "$port" | jq -r .backend)" = redis ] || die "the instance on $port is not on Redis: see $DIR/portal-*.log"
  done
  GUID=$(curl -fsS "http://127.0.0.1:${PORTS[0]}/api/companies" | jq -r '.companies[1].guid')
  local dashboard="/api/dashboard/$GUID"
  for port in "${PORTS[@]}"; do
    curl -fsS -o /dev/null -H "Host: portal.example" "http://127.0.0.1:$port$dashboard"
    curl -fsS -o /dev/null "http://127.0.0.1:$port/api/companies"
    stats "$port" >"$DIR/stats-before-$port.json"
  done

  log "$mode: $DURATION of oha on ${#PORTS[@]} instances, syncs once a second, the stale-read checker; $ROUNDS failover(s)"
  : >"$DIR/syncs.tsv"
  monitor &
  PIDS+=($!)
  RUN_PIDS+=($!)
  T0=$EPOCHREALTIME
  local ohas=()
  for port in "${PORTS[@]}"; do
    # The fleet's public host on every instance, as behind a load balancer (part of the key).
    oha -z "$DURATION" -c "$CONNECTIONS" --no-tui --output-format json --host portal.example \
      "http://127.0.0.1:$port$dashboard" >"$DIR/oha-dashboard-$port.json" 2>"$DIR/oha-dashboard-$port.log" &
    ohas+=($!)
    oha -z "$DURATION" -c $(((CONNECTIONS + 1) / 2)) --no-tui --output-format json \
      "http://127.0.0.1:$port/api/companies" >"$DIR/oha-companies-$port.json" 2>"$DIR/oha-companies-$port.log" &
    ohas+=($!)
  done
  PIDS+=("${ohas[@]}")
  RUN_PIDS+=("${ohas[@]}")
  local read_urls=()
  for port in "${PORTS[@]:1}"; do read_urls+=(--read-url "http://127.0.0.1:$port"); done
  "$BIN/stale_check" --url "http://127.0.0.1:${PORTS[0]}" "${read_urls[@]}" --host portal.example \
    --guid "$GUID" --seconds "$secs" --interval-ms 500 --readers $((2 * ${#PORTS[@]})) \
    >"$DIR/stale.json" 2> >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$DIR/stale.log") &
  local stale_pid=$!
  PIDS+=("$stale_pid")
  RUN_PIDS+=("$stale_pid")
  sleep 0.5
  sync_loop "$(awk -v t="$T0" -v s="$secs" 'BEGIN { printf "%.3f", t + s - 1 }')" &
  PIDS+=($!)
  RUN_PIDS+=($!)

  # The failovers.
  local kills=() failovers=() resyncs=() tk tr old
  for k in $(seq 1 "$ROUNDS"); do
    sleep_until "$(awk -v t="$T0" -v s="$secs" -v n=$((2 * k - 1)) -v d=$((2 * ROUNDS + 1)) 'BEGIN { printf "%.3f", t + s * n / d }')"
    if ! set_ready "$PRIMARY" "$REPLICA"; then
      log "$mode: round $k: the set is not ready yet (replica $REPLICA not in sync or not known): waiting"
      wait_ready "$PRIMARY" "$REPLICA" 30 || die "the Sentinel set was not ready for round $k: see $DIR/redis"
    fi
    log "$mode: round $k: SIGKILL to the primary on $PRIMARY"
    # Disowned first: the shell would report the kill on stderr.
    disown "${NODE_PID[$PRIMARY]}" 2>/dev/null || true
    kill -9 "${NODE_PID[$PRIMARY]}"
    tk=$EPOCHREALTIME
    kills+=("$tk")
    wait_failover "$PRIMARY" || die "no failover within 30 s of the kill: see $DIR/redis"
    failovers+=("$(elapsed "$tk" "$EPOCHREALTIME")")
    log "$mode: round $k: the sentinels name $NEW_PRIMARY after ${failovers[-1]} s"
    [ "$NEW_PRIMARY" = "$REPLICA" ] || die "the sentinels name $NEW_PRIMARY, not the replica $REPLICA"
    sleep_until "$(awk -v t="$T0" -v s="$secs" -v n=$((2 * k)) -v d=$((2 * ROUNDS + 1)) 'BEGIN { printf "%.3f", t + s * n / d }')"
    log "$mode: round $k: the old primary rejoins on $PRIMARY, empty, as a replica of $NEW_PRIMARY"
    tr=$EPOCHREALTIME
    start_node "$PRIMARY" --replicaof 127.0.0.1 "$NEW_PRIMARY"
    old=$PRIMARY
    PRIMARY=$NEW_PRIMARY
    REPLICA=$old
    if wait_ready "$PRIMARY" "$REPLICA" 30; then
      resyncs+=("$(elapsed "$tr" "$EPOCHREALTIME")")
    else
      resyncs+=("no")
      log "$mode: round $k: the rejoined node was not in sync and known to every sentinel within 30 s"
    fi
  done

  for pid in "${ohas[@]}"; do wait "$pid" || log "oha $pid exited with $?"; done
  wait "$stale_pid" || true
  local t_end=$EPOCHREALTIME
  # The sync loop ends on its own a second before; then the samples stop.
  sleep 1.2
  touch "$DIR/.stop"
  sleep 0.3
  for port in "${PORTS[@]}"; do stats "$port" >"$DIR/stats-after-$port.json" || true; done
  for pid in "${RUN_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${RUN_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done

  # Figures.
  # Samples as "time instance backend answers circuit_openings".
  jq -Rr 'split("\t") as [$t, $i, $j] | ($j | fromjson) as $s
    | [$t, $i, $s.backend, ($s.hits + $s.misses + $s.bypasses), $s.circuit_openings] | @tsv' \
    "$DIR/samples.tsv" >"$DIR/backend.tsv"
  local recoveries=() answers=() never_left=0 rec ans never tend
  for k in $(seq 1 "$ROUNDS"); do
    if [ "$k" -lt "$ROUNDS" ]; then tend=${kills[$k]}; else tend=$t_end; fi
    IFS=$'\t' read -r rec ans never < <(recovery "${kills[$((k - 1))]}" "$tend")
    recoveries+=("$rec")
    answers+=("$ans")
    never_left=$((never_left + never))
  done
  local oha_files=("$DIR"/oha-*.json) dash_files=("$DIR"/oha-dashboard-*.json) comp_files=("$DIR"/oha-companies-*.json)
  local requests non2xx errors
  requests=$(jq -s 'map(.statusCodeDistribution | to_entries | map(.value) | add // 0) | add' "${oha_files[@]}")
  non2xx=$(jq -s 'map(.statusCodeDistribution | to_entries | map(select(.key | startswith("2") | not) | .value) | add // 0) | add' "${oha_files[@]}")
  errors=$(jq -s 'map(.errorDistribution | to_entries | map(select(.key | test("aborted due to deadline") | not) | .value) | add // 0) | add' "${oha_files[@]}")
  jq -s 'map(.errorDistribution) | add' "${oha_files[@]}" >"$DIR/errors-oha.json"
  lat() { # FIELD FILES...: the worst oha run's figure, in ms
    local field=$1
    shift
    awk -v v="$(jq -s "map($field) | max * 1000" "$@")" 'BEGIN { printf "%.1f", v }'
  }
  local p50 p99 slowest
  p50="$(lat .latencyPercentiles.p50 "${dash_files[@]}") / $(lat .latencyPercentiles.p50 "${comp_files[@]}")"
  p99="$(lat .latencyPercentiles.p99 "${dash_files[@]}") / $(lat .latencyPercentiles.p99 "${comp_files[@]}")"
  slowest="$(lat .summary.slowest "${dash_files[@]}") / $(lat .summary.slowest "${comp_files[@]}")"
  local stale reads stale_errors stale_syncs
  stale=$(jq -r '.stale // "?"' "$DIR/stale.json" 2>/dev/null || echo "?")
  reads=$(jq -r '.reads // "?"' "$DIR/stale.json" 2>/dev/null || echo "?")
  stale_errors=$(jq -r '.errors // "?"' "$DIR/stale.json" 2>/dev/null || echo "?")
  stale_syncs=$(jq -r '.syncs // "?"' "$DIR/stale.json" 2>/dev/null || echo "?")
  local stale_unconfirmed
  stale_unconfirmed=$(jq -r '.unconfirmed // "?"' "$DIR/stale.json" 2>/dev/null || echo "?")
  local syncs_total syncs_done syncs_unconfirmed syncs_http switches openings=0
  syncs_total=$(wc -l <"$DIR/syncs.tsv")
  syncs_done=$(awk -F '\t' '$3 != "failed"' "$DIR/syncs.tsv" | wc -l)
  syncs_unconfirmed=$(awk -F '\t' '$3 == "not-replicated" || $3 == "invalidation-failed"' "$DIR/syncs.tsv" | wc -l)
  syncs_http=$(awk -F '\t' '$3 == "over-http"' "$DIR/syncs.tsv" | wc -l)
  switches=$(grep -c "+switch-master" "$DIR/redis/sentinel-${SENTINELS[0]}.log" || true)
  for port in "${PORTS[@]}"; do
    openings=$((openings + $(jq -s '.[1].circuit_openings - .[0].circuit_openings' \
      "$DIR/stats-before-$port.json" "$DIR/stats-after-$port.json")))
  done
  local failed=$((non2xx + errors))
  # Stale reads in episodes (a gap of over 0.3 s starts a new one): when, from the start of
  # the load, and how long.
  local episodes kill_offsets
  episodes=$(awk -v t0="$T0" '/stale read/ {
      if (!n || $1 - last > 0.3) { n++; first[n] = $1 }
      last = $1; count[n]++; end[n] = $1
    } END {
      if (!n) { printf "none"; exit }
      for (i = 1; i <= n; i++) printf "%s+%.2f s for %.2f s (%d reads)", (i > 1 ? ", " : ""), first[i] - t0, end[i] - first[i], count[i]
    }' "$DIR/stale.log")
  kill_offsets=$(for tk in "${kills[@]}"; do awk -v t0="$T0" -v t="$tk" 'BEGIN { printf "+%.2f s\n", t - t0 }'; done | paste -sd, | sed 's/,/, /g')
  printf '| %s | %s | %s | **%s** | %s | %s | %s | **%s** of %s | %s | %s | %s | %s of %s (%s / %s) |\n' \
    "$mode" "${#PORTS[@]}" "$requests" "$failed" "$p50" "$p99" "$slowest" "$stale" "$reads" \
    "$(join "${failovers[@]}")" "$(join "${recoveries[@]}")" "$(join "${answers[@]}")" \
    "$syncs_done" "$syncs_total" "$syncs_unconfirmed" "$syncs_http" >>"$OUT/rows.md"
  {
    echo "- $mode: failed = $non2xx non-2xx answers + $errors oha errors; the stale-read checker: $stale_errors failed reads or syncs, $stale_syncs syncs through instance 1 ($stale_unconfirmed whose invalidation failed: no floor for the readers)."
    echo "  Kills at $kill_offsets from the start of the load; stale reads: $episodes."
    echo "  Rejoined node in sync and known to every sentinel after $(join "${resyncs[@]}") s; +switch-master seen by a sentinel: $switches; circuit openings: $openings; instances never seen off Redis after a kill: $never_left."
  } >>"$OUT/notes.md"
  log "$mode: $requests requests, $failed failed, $stale stale of $reads checked, failover $(join "${failovers[@]}") s, recovery $(join "${recoveries[@]}") s"
  [ "$failed" -eq 0 ] || { log "$mode: FAILED: $failed requests failed (see $DIR/errors-oha.json)"; STATUS=1; }
  [ "$stale" = 0 ] || { log "$mode: FAILED: stale reads: $stale (see $DIR/stale.log)"; STATUS=1; }
  [ "$stale_errors" = 0 ] || { log "$mode: FAILED: the stale-read checker saw $stale_errors errors (see $DIR/stale.log)"; STATUS=1; }
  [ "$switches" -eq "$ROUNDS" ] || log "$mode: note: $switches primary switches for $ROUNDS kill(s): the sentinels failed over again (see $DIR/redis)"
}

: >"$OUT/rows.md"
: >"$OUT/notes.md"
for mode in $MODES; do run "$mode"; done
{
  echo "Sentinel failover under load: \`benches/load/failover.sh\` ($DURATION per run, $INSTANCES instances, $CONNECTIONS + $(((CONNECTIONS + 1) / 2)) oha connections per instance on the dashboard + the company list, $ROUNDS failover(s) per run)"
  echo
  echo "| fallback mode | instances | requests | failed | p50 ms | p99 ms | slowest ms | stale reads of checked | failover s | recovery s | answers while falling back | syncs (unconfirmed / over HTTP) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  cat "$OUT/rows.md"
  echo
  echo "Latencies: dashboard / company list, the worst oha run's."
  cat "$OUT/notes.md"
} | tee "$OUT/table.md"
log "table and raw results in $OUT"
exit "$STATUS"
