# Shared settings for the project's scripts; source it, don't run it.
# Caches live outside the clone so later runs (and CI) reuse them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
export KSTREAMS_CACHE="${KSTREAMS_CACHE:-$HOME/.cache/kstreams}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KSTREAMS_CACHE/target}"
# The test broker: Apache Kafka, from Maven Central's jars (docs/BROKER.md). The same version
# is pinned in scripts/kafka/pom.xml and streams-testkit/src/broker/kafka.rs.
KAFKA_VERSION=4.4.0
KAFKA_HOME="$KSTREAMS_CACHE/kafka-$KAFKA_VERSION"
# The fallback broker where no JVM runs (KSTREAMS_BROKER=nisshi, or no java found).
NISSHI_VERSION=0.7.0
NISSHI_ROOT="$KSTREAMS_CACHE/broker/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
# Where scripts/broker.sh keeps the running broker's pid, address and data.
RUN_DIR="${KSTREAMS_RUN_DIR:-$KSTREAMS_CACHE/run}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The java the broker runs on: $JAVA_HOME/bin/java, or the one on the PATH (as the test harness
# finds it).
java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME/bin/java"
  else
    command -v java || true
  fi
}

# The major version of that java (17 for "17.0.15"), empty when there is none.
java_major() {
  local java
  java="$(java_bin)"
  [ -n "$java" ] || return 0
  "$java" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.[0-9]*\)*.*".*/\1/p' | head -n 1
}

# Which broker the scripts install and start: KSTREAMS_BROKER (kafka or nisshi), else Kafka,
# or nisshi when no java is found (the test harness decides the same way).
broker_kind() {
  case "${KSTREAMS_BROKER:-}" in
    kafka | nisshi) echo "$KSTREAMS_BROKER" ;;
    "") if [ -n "$(java_bin)" ]; then echo kafka; else echo nisshi; fi ;;
    *) log "KSTREAMS_BROKER is kafka or nisshi, not $KSTREAMS_BROKER"; exit 2 ;;
  esac
}

# Runs as root, or through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages named that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Runs a long build ("$@" after the first two arguments) with cargo's own lines shown, and
# every 30 s a line saying how far it is: crates started so far of about $1, minutes elapsed,
# and the crate it compiles now. On 2 cores single crates (RocksDB, librdkafka, the broker's
# storage) compile for minutes without a line of their own; this says it has not hung.
with_progress() {
  local total="$1" what="$2"
  shift 2
  local out
  out="$(mktemp)"
  local started=$SECONDS ticks=0
  "$@" 2> >(tee "$out" >&2) &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    ticks=$((ticks + 1))
    if ((ticks % 30 == 0)); then
      local n now
      n="$(grep -cE '^ *(Compiling|Checking) ' "$out" || true)"
      now="$(grep -E '^ *(Compiling|Checking) ' "$out" | tail -n 1 | awk '{print $2}' || true)"
      log "still building $what: $n of about $total crates started, $(((SECONDS - started) / 60)) min so far${now:+; now $now}"
    fi
  done
  local rc=0
  wait "$pid" || rc=$?
  rm -f "$out"
  return "$rc"
}

# About how many crates the workspace builds with its tests and examples.
workspace_crates() {
  (cd "$ROOT" && cargo tree --workspace -e normal,build,dev --prefix none 2>/dev/null |
    sed 's/ (.*//' | sort -u | wc -l) || echo "?"
}
