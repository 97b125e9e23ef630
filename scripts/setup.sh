#!/usr/bin/env bash
# Installs everything the build and the tests need beyond the Rust toolchain: Debian packages
# (libclang for RocksDB's bindings), Java 17 and Maven when they are missing, and the test
# broker (Apache Kafka's jars from Maven Central; nisshi where no JVM can run).
# Safe to run again: it only installs what is missing.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

apt_install libclang-dev clang pkg-config make g++ perl

# Apache Kafka 4.x needs Java 17 or later, and Maven fetches it. Debian 12 packages both; a
# machine where they cannot be installed runs the fallback broker (KSTREAMS_BROKER=nisshi).
if [ "${KSTREAMS_BROKER:-}" != nisshi ]; then
  major="$(java_major)"
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    log "Java 17 or later is needed for Apache Kafka $KAFKA_VERSION (found: ${major:-no java}); installing Debian's openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless ||
      log "could not install Java 17: the tests will use the fallback broker nisshi (docs/BROKER.md)"
  fi
  if [ -n "$(java_major)" ] && [ "$(java_major)" -ge 17 ] && ! command -v mvn >/dev/null; then
    log "Maven is needed to fetch Apache Kafka's jars from Maven Central; installing Debian's maven"
    apt_install maven || { log "could not install Maven: install it, or set KSTREAMS_BROKER=nisshi"; exit 1; }
  fi
fi

"$ROOT/scripts/broker.sh" install
