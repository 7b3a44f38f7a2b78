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

# Starts `meridian server` on free loopback ports with its data in `$1` (its log beside it,
# `$1.log`), stopped at exit; sets `node_pid`, `node_endpoint` and `node_admin_port`.
start_node() { # data-dir
  local port
  port="$(free_port)"; node_admin_port="$(free_port)"; node_endpoint="http://127.0.0.1:$port"
  "$MERIDIAN_BIN" server --data "$1" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$node_admin_port" \
    >"$1.log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
  wait_port 127.0.0.1 "$port" 60
}

# curl signed as the bench key (SigV4, unsigned payload). curl signs the query as written: keep
# parameters sorted and give each an `=`.
s3() {
  curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$BENCH_ACCESS_KEY:$BENCH_SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

enable_versioning() { # endpoint bucket
  s3 -X PUT "$1/$2?versioning=" -H 'content-type: application/xml' --data-binary \
    '<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>'
}
