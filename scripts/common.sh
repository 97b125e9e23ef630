# Shared settings for the project's scripts; source it, don't run it.
# Caches live outside the clone so later runs (and CI) reuse them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
export KSTREAMS_CACHE="${KSTREAMS_CACHE:-$HOME/.cache/kstreams}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KSTREAMS_CACHE/target}"
NISSHI_VERSION=0.7.0
NISSHI_ROOT="$KSTREAMS_CACHE/broker/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
RUN_DIR="$KSTREAMS_CACHE/run"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

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
