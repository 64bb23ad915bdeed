#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs redis-server (with redis-cli, which builds
# the test cluster) when it is missing and we are root (the Redis tests start their own
# servers and a three-primary cluster on free loopback ports; none is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    echo "redis-server or redis-cli is missing: install them (apt-get install redis-server) and rerun" >&2
    exit 1
  fi
fi
# Redis tests must run, never skip themselves.
export TRC_REQUIRE_REDIS=1

# The whole workspace: the library and the portal (examples/portal).
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo test (all features)"
cargo test --workspace --all-features --all-targets
echo "== cargo doc (private items too: every intra-doc link resolves)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --document-private-items -p tower-response-cache
echo "== doc tests"
cargo test --workspace --all-features --doc
echo "== cargo test (default features)"
cargo test --workspace --lib --tests
echo "== benches build (release)"
cargo bench --workspace --all-features --no-run
echo "all tests passed"
