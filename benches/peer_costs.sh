#!/usr/bin/env bash
# benches/peer_costs.sh [PEERBENCH_DIR]: what one in-process hit of arc (axum-response-cache)
# and of ours costs beyond its instruction count, under callgrind's cache and branch
# simulation: atomic instructions, L1 misses, mispredicted branches, and callgrind's cycle
# estimate (benches/peer_costs.py says how). For when `micro.sh` times a layer slower than
# `peer_instructions.sh` counts it, on machines without `perf`. About 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:-../shared/peerbench}
bin=$(benches/peer_bench_binary.sh "$peer")
out=$(mktemp -d "${TMPDIR:-/tmp}/trc-peercosts.XXXXXX")
for variant in none arc ours; do
    for iters in 2000 6000; do
        MICRO_ROUNDS=1 MICRO_ITERS=$iters MICRO_ONLY=$variant valgrind --tool=callgrind \
            --cache-sim=yes --branch-sim=yes --dump-instr=yes \
            --callgrind-out-file="$out/$variant.$iters.out" "$bin" >/dev/null 2>&1
    done
done
python3 benches/peer_costs.py "$out"
rm -rf "$out"
