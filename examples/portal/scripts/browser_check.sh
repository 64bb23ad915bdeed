#!/usr/bin/env bash
# The portal page in headless Chromium: starts the portal on a free port with a small
# database, reads dashboards and syncs a company while the page polls /metrics, and checks
# that every live chart drew data (each canvas's data-points, set by the page's drawing
# code). With SCREENSHOT=path it also saves a screenshot of the page. Virtual time runs the
# page's timers faster than the traffic, so rates there read low: a check, not a portrait.
#
#   examples/portal/scripts/browser_check.sh            # needs chromium (apt-get install chromium)
#   SCREENSHOT=docs/portal-metrics.png examples/portal/scripts/browser_check.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

CHROMIUM=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROMIUM" ]; then
  echo "browser_check: no chromium on PATH (apt-get install chromium)" >&2
  exit 1
fi
cargo build -q -p portal
BIN="${CARGO_TARGET_DIR:-target}/debug/portal"

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
PORTAL_ADDR="127.0.0.1:$PORT" PORTAL_DB="$WORK/portal.db" PORTAL_SEED_VOUCHERS=20000 \
  PORTAL_CACHE=on RUST_LOG=warn "$BIN" >"$WORK/portal.log" 2>&1 &
PORTAL=$!
TRAFFIC=""
cleanup() {
  [ -n "$TRAFFIC" ] && kill "$TRAFFIC" 2>/dev/null || true
  kill "$PORTAL" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -sf "$URL/health" >/dev/null && break
  sleep 0.1
done
GUIDS=$(curl -sf "$URL/api/companies" | python3 -c 'import json,sys; print(" ".join(c["guid"] for c in json.load(sys.stdin)["companies"][:4]))')
# Dashboards read over and over (hits, and a miss after each sync), one sync a second.
(
  while true; do
    for g in $GUIDS; do curl -s -o /dev/null "$URL/api/dashboard/$g"; done
    curl -s -o /dev/null -X POST "$URL/api/sync/${GUIDS%% *}"
    sleep 0.1
  done
) &
TRAFFIC=$!
sleep 2

# Virtual time runs the page's one-second poll a dozen times; the DOM is printed after.
DOM=$("$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --window-size=1280,1700 --virtual-time-budget=12000 --dump-dom "$URL/" 2>"$WORK/chromium.log")
fail=0
for chart in chart-hit-ratio chart-origin chart-latency chart-invalidation chart-backend; do
  points=$(printf '%s' "$DOM" | grep -o "id=\"$chart\" data-points=\"[0-9]*\"" | grep -o '[0-9]*"$' | tr -d '"' || true)
  if [ -z "$points" ] || [ "$points" -lt 2 ]; then
    echo "FAIL $chart drew ${points:-no} points" >&2
    fail=1
  else
    echo "ok   $chart drew $points points"
  fi
done
if [ -n "${SCREENSHOT:-}" ]; then
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
    --window-size=1280,1250 --virtual-time-budget=12000 --screenshot="$SCREENSHOT" "$URL/" 2>>"$WORK/chromium.log"
  echo "screenshot: $SCREENSHOT"
fi
[ "$fail" = 0 ] || { tail -20 "$WORK/chromium.log" >&2; exit 1; }
echo "browser check passed"
