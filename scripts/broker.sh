#!/usr/bin/env bash
# The project's test broker (nisshi 0.7.0, see docs/BROKER.md).
#
#   scripts/broker.sh install   build it into the cache once (10-25 minutes on 2 cores)
#   scripts/broker.sh start     start it in the background on a free loopback port; prints the
#                               bootstrap address (also in $KSTREAMS_CACHE/run/broker.addr)
#   scripts/broker.sh stop      stop it by its process id
#   scripts/broker.sh status    say whether it runs, and where
#
# `start` runs the kstreams-test-broker launcher, the same code the tests use, so scripts,
# examples and tests get the same broker set-up. Options for start: --engine memory|sqlite.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PID_FILE="$RUN_DIR/broker.pid"
ADDR_FILE="$RUN_DIR/broker.addr"

install() {
  if [ -x "$NISSHI_BIN" ]; then
    return 0
  fi
  log "installing nisshi $NISSHI_VERSION into $NISSHI_ROOT (once; 10-25 minutes on 2 cores)"
  mkdir -p "$NISSHI_ROOT"
  # It declares rustc 1.96 but builds and runs with 1.95; without features it has no storage.
  # About 570 crates (`cargo tree` of nisshi 0.7.0 with these features).
  with_progress 570 "the test broker" \
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
  (cd "$ROOT" && cargo build --quiet -p streams-testkit --bin kstreams-test-broker)
  local data_dir="$RUN_DIR/broker-data"
  rm -rf "$data_dir"
  mkdir -p "$data_dir"
  nohup "$CARGO_TARGET_DIR/debug/kstreams-test-broker" --data-dir "$data_dir" \
    --ready-file "$ADDR_FILE" "$@" >"$RUN_DIR/broker.out" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 600); do
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
  log "the test broker did not become ready within 60 s:"
  tail -n 40 "$RUN_DIR/broker.out" >&2
  stop
  exit 1
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 100); do
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
