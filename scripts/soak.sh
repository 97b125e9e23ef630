#!/usr/bin/env bash
# The kill soak at full size (CI runs the same test with 10 kills; docs/RELIABILITY.md): two
# instances of an exactly-once application with a repartition topic and a state store over a continuous input,
# a random instance SIGKILLed and restarted at random points (now and then with its state
# directory deleted), and the whole output checked against an oracle at the end. It prints
# each kill, the records restored per restart, the time each takeover took, and the totals.
#
#   scripts/soak.sh [--kills N] [--rate RECORDS_PER_SECOND]     (default: 100 kills, 300/s)
#
# Starts a broker of its own (Apache Kafka; nisshi with KSTREAMS_BROKER=nisshi), reached through
# the test proxy, transparent in front of Kafka. Release build. Each
# instance's log goes to $KSTREAMS_CACHE/soak-logs/ (RUST_LOG, default info).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kills=100
rate=300
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--kills N] [--rate RECORDS_PER_SECOND]" >&2; exit 2 ;;
  esac
done
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "kill soak: $kills kills, $rate records/s"
logs="$KSTREAMS_CACHE/soak-logs"
rm -rf "$logs" && mkdir -p "$logs"
log "instance logs: $logs"
KSTREAMS_SOAK_KILLS="$kills" KSTREAMS_SOAK_RATE="$rate" KSTREAMS_SOAK_LOG_DIR="$logs" \
  cargo test --release --test kill_soak -- --nocapture 2>&1 |
  grep --line-buffered -A3 -E '^(kill|test |thread|  left|  right)|kill soak|repartition|panicked'
