#!/usr/bin/env bash
# The broker conformance tests (tests/broker_conformance.rs) against the fallback broker,
# nisshi 0.7.0 behind the patching test proxy: the same assertions that hold on Apache Kafka.
# Installs nisshi first when it is missing (10-25 minutes on 2 cores, once).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export KSTREAMS_BROKER=nisshi
unset KAFKA_BOOTSTRAP_SERVERS
"$ROOT/scripts/broker.sh" install
cd "$ROOT"
log "broker conformance tests on nisshi $NISSHI_VERSION"
cargo test --test broker_conformance "$@"
