#!/usr/bin/env bash
# benches/peer_bench_binary.sh [PEERBENCH_DIR]: build the peer bench with our layer (one
# tiny round of `micro.sh .`) and print the path of the binary it ran. Shared by
# `peer_instructions.sh` and `peer_costs.sh`, which run that binary under callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:-../shared/peerbench}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
log=$(mktemp)
MICRO_ROUNDS=1 MICRO_ITERS=1 "$peer/micro.sh" . >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
target=$peer/target
[ -w "$peer" ] || target=${PEERBENCH_WORK:-${TMPDIR:-/tmp}/peerbench}/target
ls -t "$target"/release/deps/layer_overhead-* | grep -v '\.d$' | head -1
