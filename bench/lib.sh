# shellcheck shell=bash
# What the single-purpose bench scripts share, sourced first thing: peers.sh's helpers
# (free_port, wait_port, the bench credentials), `here` and `repo`, the Meridian binary and the
# load generator, and a scratch directory cleaned up with every process a script started.
here="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=bench/peers.sh
source "$here/peers.sh"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

# Checks MERIDIAN_BIN (default: the build of profile $1, release unless given) and sets `bench`,
# the load generator: BENCH_BIN if set, else `$MERIDIAN_BIN bench`.
use_meridian() { # [profile]
  MERIDIAN_BIN="${MERIDIAN_BIN:-$target_dir/${1:-release}/meridian}"
  [[ -x "$MERIDIAN_BIN" ]] || {
    echo "MERIDIAN_BIN=$MERIDIAN_BIN is not executable (cargo build --release -p meridian)" >&2
    exit 1
  }
  if [[ -n "${BENCH_BIN:-}" ]]; then bench=("$BENCH_BIN"); else bench=("$MERIDIAN_BIN" bench); fi
}

# Makes `$scratch` (under BENCH_DIR, default /var/tmp); at exit every process in `pids` is
# stopped and the directory removed.
make_scratch() { # name
  scratch="$(mktemp -d "${BENCH_DIR:-/var/tmp}/meridian-$1.XXXXXX")"
  pids=()
  trap stop_and_clean EXIT
}

stop_and_clean() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$scratch"
}
