#!/usr/bin/env bash
# The project's test command: set-up on a fresh machine (Debian packages, the test broker),
# then formatting, lints and every test (unit, broker, doc). Broker tests start the project's
# broker themselves, or use KAFKA_BOOTSTRAP_SERVERS when it is set.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all --check
# The first build compiles RocksDB and librdkafka (10 minutes or more on 2 cores), once for
# clippy and once for the tests: progress lines say how far it is.
crates="$(workspace_crates)"
log "cargo clippy -D warnings"
with_progress "$crates" "for clippy" cargo clippy --workspace --all-targets -- -D warnings
log "cargo test"
with_progress "$crates" "the tests" cargo test --workspace --no-run
cargo test --workspace "$@"
