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
