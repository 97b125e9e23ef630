#!/usr/bin/env bash
# kstreams against Kafka Streams 4.4 on one Apache Kafka broker (issue 29; docs/BENCHMARKS.md):
# builds both sides (kstreams' in release, the Java side with Maven), starts a broker of its
# own, runs each workload for both contenders in alternating rounds and prints the table.
#
#   scripts/compare.sh [RECORDS [ROUNDS [WORKLOADS]]]
#
# Defaults: 1,000,000 records, 3 rounds, every workload (map, count, window-count, join,
# window-count-final; or a comma-separated list). Two more names in the list measure restarts
# of `count` rather than throughput, for kstreams, Kafka Streams and Kafka Streams with KIP-892's
# transactional state stores (they are not part of `all`): `recovery` (SIGKILL once half of
# RECORDS records over 1,000 keys is committed, then a restart on the same state directory)
# and `restore-startup` (a new instance without local state over a changelog of RECORDS
# records, one per key), e.g. `scripts/compare.sh 1000000 3 recovery,restore-startup`
# (benches/compare_workload.rs says what each measures). The Java side builds outside the
# clone ($KSTREAMS_CACHE/compare-build); Maven's own cache (~/.m2) is reused.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
records="${1:-1000000}"
rounds="${2:-3}"
workloads="${3:-all}"

build_dir="$KSTREAMS_CACHE/compare-build"
log "building the Kafka Streams side (Maven)"
mvn -B -q -f benches/compare/pom.xml -Dcompare.build.dir="$build_dir" \
  package dependency:copy-dependencies -DincludeScope=runtime
classpath="$build_dir/classes:$build_dir/dependency/*"

log "building the kstreams side (release; the first build compiles RocksDB once more: about 10 minutes on 2 cores)"
with_progress "$(workspace_crates)" "the comparison" cargo bench --bench compare_workload --no-run
binary="$(cargo bench --bench compare_workload --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*compare_workload[^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$binary" ] || { log "cannot find the compare_workload binary"; exit 1; }

export KSTREAMS_RUN_DIR="${KSTREAMS_RUN_DIR:-$KSTREAMS_CACHE/run-compare}"
"$ROOT/scripts/broker.sh" stop >/dev/null 2>&1 || true
address="$("$ROOT/scripts/broker.sh" start)"
trap '"$ROOT/scripts/broker.sh" stop' EXIT
log "broker at $address"
KAFKA_BOOTSTRAP_SERVERS="$address" "$binary" drive "$records" "$rounds" "$workloads" "$classpath"
