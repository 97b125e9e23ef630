#!/usr/bin/env bash
# The project's test broker: Apache Kafka (docs/BROKER.md), or the fallback nisshi 0.7.0 where
# no JVM runs (KSTREAMS_BROKER=nisshi, or no java found).
#
#   scripts/broker.sh install   fetch it into the cache once: Kafka's jars with Maven (about a
#                               minute), or build nisshi (10-25 minutes on 2 cores)
#   scripts/broker.sh start     start it in the background on a free loopback port; prints the
#                               bootstrap address (also in $KSTREAMS_CACHE/run/broker.addr)
#   scripts/broker.sh stop      stop it (Kafka shuts down in order)
#   scripts/broker.sh status    say whether it runs, and where
#
# `start` runs the kstreams-test-broker launcher, the same code the tests use, so scripts,
# examples and tests get the same broker set-up. Options for start: --durable.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PID_FILE="$RUN_DIR/broker.pid"
ADDR_FILE="$RUN_DIR/broker.addr"

install() {
  case "$(broker_kind)" in
    kafka) install_kafka ;;
    nisshi) install_nisshi ;;
  esac
}

# Apache Kafka's broker and storage tool with a log4j2 backend: the runtime classpath of
# scripts/kafka/pom.xml, copied into $KAFKA_HOME/libs. Maven's own cache (~/.m2) is reused.
install_kafka() {
  if [ -f "$KAFKA_HOME/installed" ]; then
    return 0
  fi
  local major
  major="$(java_major)"
  if [ -z "$major" ]; then
    log "no java found (\$JAVA_HOME/bin/java or on the PATH): Apache Kafka $KAFKA_VERSION needs Java 17 or later (scripts/setup.sh installs Debian's openjdk-17-jre-headless), or set KSTREAMS_BROKER=nisshi for the fallback broker"
    exit 1
  fi
  if [ "$major" -lt 17 ]; then
    log "$(java_bin) is Java $major: Apache Kafka $KAFKA_VERSION needs Java 17 or later (set JAVA_HOME to one)"
    exit 1
  fi
  if ! command -v mvn >/dev/null; then
    log "Maven (mvn) is not installed: it fetches Apache Kafka's jars from Maven Central (scripts/setup.sh installs Debian's maven)"
    exit 1
  fi
  log "fetching Apache Kafka $KAFKA_VERSION with Maven into $KAFKA_HOME (once)"
  local started=$SECONDS
  rm -rf "$KAFKA_HOME/libs.partial"
  mkdir -p "$KAFKA_HOME"
  # The plugin's version is pinned so that the result does not depend on Maven's default.
  local mvn_log="$KAFKA_HOME/maven.log"
  if ! mvn -B --no-transfer-progress -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs.partial" >"$mvn_log" 2>&1; then
    log "Maven could not fetch Apache Kafka $KAFKA_VERSION (Maven Central must be reachable); the end of $mvn_log:"
    tail -n 30 "$mvn_log" >&2
    exit 1
  fi
  local version
  version="$("$(java_bin)" -cp "$KAFKA_HOME/libs.partial/*" kafka.Kafka --version 2>/dev/null | tail -n 1)"
  if [ "$version" != "$KAFKA_VERSION" ]; then
    log "the fetched jars say Kafka version '$version', not $KAFKA_VERSION; see scripts/kafka/pom.xml"
    exit 1
  fi
  rm -rf "$KAFKA_HOME/libs"
  mv "$KAFKA_HOME/libs.partial" "$KAFKA_HOME/libs"
  touch "$KAFKA_HOME/installed"
  log "Apache Kafka $KAFKA_VERSION installed: $(ls "$KAFKA_HOME/libs" | wc -l) jars, $(du -sh "$KAFKA_HOME/libs" | cut -f1), $((SECONDS - started)) s"
}

install_nisshi() {
  if [ -x "$NISSHI_BIN" ]; then
    return 0
  fi
  log "installing the fallback broker nisshi $NISSHI_VERSION into $NISSHI_ROOT (once; 10-25 minutes on 2 cores)"
  mkdir -p "$NISSHI_ROOT"
  # It declares rustc 1.96 but builds and runs with 1.95; without features it has no storage.
  # About 570 crates (`cargo tree` of nisshi 0.7.0 with these features).
  with_progress 570 "the fallback broker" \
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --features dynostore,libsql --root "$NISSHI_ROOT" --target-dir "$KSTREAMS_CACHE/broker/build"
  [ -x "$NISSHI_BIN" ] || { log "nisshi install did not produce $NISSHI_BIN"; exit 1; }
  rm -rf "$KSTREAMS_CACHE/broker/build"
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  install
  if pid="$(running_pid)"; then
    log "the test broker already runs (pid $pid)"
    cat "$ADDR_FILE"
    return 0
  fi
  mkdir -p "$RUN_DIR"
  rm -f "$ADDR_FILE"
  # Built with the workspace's features, so that it shares the dependencies (librdkafka's C
  # among them) of the other builds; scripts/test.sh adds --tests, after which nothing but the
  # launcher itself is compiled.
  # shellcheck disable=SC2086
  (cd "$ROOT" && cargo build --quiet --workspace --bin kstreams-test-broker ${KSTREAMS_LAUNCHER_TARGETS:-})
  local data_dir="$RUN_DIR/broker-data"
  rm -rf "$data_dir"
  mkdir -p "$data_dir"
  nohup "$CARGO_TARGET_DIR/debug/kstreams-test-broker" --data-dir "$data_dir" \
    --ready-file "$ADDR_FILE" "$@" >"$RUN_DIR/broker.out" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 1500); do
    if [ -s "$ADDR_FILE" ]; then
      cat "$ADDR_FILE"
      return 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      log "the test broker exited while starting:"
      tail -n 40 "$RUN_DIR/broker.out" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "the test broker did not become ready within 150 s:"
  tail -n 40 "$RUN_DIR/broker.out" >&2
  stop
  exit 1
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid"
    # The launcher gives Kafka 20 s to shut down in order.
    for _ in $(seq 1 250); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped the test broker (pid $pid)"
  fi
  rm -f "$PID_FILE" "$ADDR_FILE"
}

status() {
  if pid="$(running_pid)"; then
    echo "running (pid $pid) at $(cat "$ADDR_FILE" 2>/dev/null)"
  else
    echo "not running"
    return 1
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
