#!/usr/bin/env bash
# Runs an example end to end on a fresh machine: set-up (Debian packages, the test broker),
# then the example, which starts the project's broker itself unless KAFKA_BOOTSTRAP_SERVERS
# names one. Usage: scripts/run-example.sh [example] [args...] (default: order_routing)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
example="${1:-order_routing}"
shift || true
cargo run --quiet --example "$example" -- "$@"
