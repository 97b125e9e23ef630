#!/usr/bin/env bash
# The project's test command: set-up on a fresh machine (Debian packages, Java and Maven, the
# test broker), then formatting, lints and every test (unit, broker, doc) against Apache Kafka.
#
# One broker serves the whole run (started here, stopped at the end, its address given to the
# tests in KAFKA_BOOTSTRAP_SERVERS); tests that restart, pause or cut a broker start their own.
# With KAFKA_BOOTSTRAP_SERVERS already set, the tests use that broker instead.
# Arguments go to `cargo test` (say, `scripts/test.sh --test dsl_broker`).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all --check
# The first build compiles RocksDB and librdkafka (10 minutes or more on 2 cores); clippy and
# the tests share it: progress lines say how far it is.
crates="$(workspace_crates)"
log "cargo clippy -D warnings"
with_progress "$crates" "for clippy" cargo clippy --workspace --all-targets -- -D warnings
log "building the tests"
with_progress "$crates" "the tests" cargo test --workspace --no-run

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  # A broker of this run's own, apart from one a user may have started with broker.sh.
  export KSTREAMS_RUN_DIR="$KSTREAMS_CACHE/run-tests" KSTREAMS_LAUNCHER_TARGETS=--tests
  trap '"$ROOT/scripts/broker.sh" stop' EXIT
  "$ROOT/scripts/broker.sh" stop
  started=$SECONDS
  KAFKA_BOOTSTRAP_SERVERS="$("$ROOT/scripts/broker.sh" start)"
  export KAFKA_BOOTSTRAP_SERVERS
  log "the test broker ($(broker_kind)) answers at $KAFKA_BOOTSTRAP_SERVERS after $((SECONDS - started)) s"
fi
log "cargo test"
# Each test's log is captured and printed only when it fails (streams_testkit::init_tracing).
RUST_LOG="${RUST_LOG:-info}" cargo test --workspace --no-fail-fast "$@"
