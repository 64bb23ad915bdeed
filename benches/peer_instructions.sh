#!/usr/bin/env bash
# benches/peer_instructions.sh [PEERBENCH_DIR]: instructions per in-process hit of each layer
# in the peer bench (`../shared/peerbench/micro.sh .`'s harness), under callgrind, next to
# the direct call of the handler. Instruction counts hold still where the machines' timings
# swing by 30 %; they miss what instructions do not show (atomics, cache misses).
#
# Each variant runs twice (2 000 and 6 000 iterations); the difference over the 4 000 extra
# iterations, each 7.25 calls (a warm quarter, one timed round, three 2-thread rounds), is the
# cost of one call without the fixed start-up cost. `direct` runs in every pass, so a layer's
# own cost is its pass minus the direct-only pass, and its overhead that minus `direct`.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:-../shared/peerbench}
bin=$(benches/peer_bench_binary.sh "$peer")
per_call() { # per_call VARIANTS: instructions per call of a pass keeping VARIANTS besides direct
    local a b
    a=$(MICRO_ROUNDS=1 MICRO_ITERS=2000 MICRO_ONLY=$1 valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null "$bin" 2>&1 | awk '/Collected/ {print $4}')
    b=$(MICRO_ROUNDS=1 MICRO_ITERS=6000 MICRO_ONLY=$1 valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null "$bin" 2>&1 | awk '/Collected/ {print $4}')
    echo $(((b - a) * 4 / (29 * 4000)))
}
direct=$(per_call none)
echo "| layer | instructions per call | overhead over direct |"
echo "|---|---:|---:|"
echo "| direct | $direct | — |"
for v in thc arc ours; do
    total=$(per_call "$v")
    own=$((total - direct))
    echo "| $v | $own | +$((own - direct)) |"
done
