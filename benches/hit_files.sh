#!/usr/bin/env bash
# Which files of src/ a memory hit runs, and the instructions each adds per hit: the
# `benches/hit_instructions.rs` hit under callgrind with line tables, 0 and HITS hits, the
# difference per hit grouped by file (benches/hit_files.py says how).
#
#   benches/hit_files.sh            # 20 000 hits
#   HITS=5000 benches/hit_files.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HITS=${HITS:-20000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/trc-hitfiles.XXXXXX")
export CARGO_PROFILE_BENCH_DEBUG=line-tables-only
cargo bench --bench hit_instructions --no-run >&2
BIN=$(ls -t "$TARGET_DIR"/release/deps/hit_instructions-* | grep -v '\.d$' | head -1)
valgrind --tool=callgrind --callgrind-out-file="$OUT/zero.out" "$BIN" hit 0 2>/dev/null
valgrind --tool=callgrind --callgrind-out-file="$OUT/hit.out" "$BIN" hit "$HITS" 2>/dev/null
python3 benches/hit_files.py "$OUT/zero.out" "$OUT/hit.out" "$HITS"
rm -rf "$OUT"
