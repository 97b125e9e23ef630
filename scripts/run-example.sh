#!/usr/bin/env bash
# Runs an example end to end on a fresh machine: set-up (Debian packages, the test broker),
# then the example, which starts the project's broker itself unless KAFKA_BOOTSTRAP_SERVERS
# names one. Usage: scripts/run-example.sh [example] [args...]
# (default: fraud_detection --generate 20000 --run-for 60)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ $# -eq 0 ]; then
  set -- fraud_detection --generate 20000 --run-for 60
fi
example="$1"
shift
log "building the example $example (the first build compiles RocksDB and librdkafka once: about 11 minutes on 2 cores)"
with_progress "$(workspace_crates)" "the example $example" cargo build --example "$example"
exec "$CARGO_TARGET_DIR/debug/examples/$example" "$@"
