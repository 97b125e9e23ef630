#!/usr/bin/env bash
# The project's test command: set-up on a fresh machine (Debian packages, the test broker),
# then formatting, lints and every test (unit, broker, doc). Broker tests start the project's
# broker themselves, or use KAFKA_BOOTSTRAP_SERVERS when it is set.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace "$@"
