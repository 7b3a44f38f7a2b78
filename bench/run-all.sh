#!/usr/bin/env bash
# The whole single-node benchmark matrix (issue 3) in one command:
# Meridian vs peer S3 servers vs the ceilings (plain files with fsync, an
# HTTP server that stores nothing), same client, same workloads, one table.
#
#   MERIDIAN_BIN=target/release/meridian bench/run-all.sh          # full run
#   QUICK=1 bench/run-all.sh                                       # 3 s per run, 10k-key LIST
#
# Environment:
#   MERIDIAN_BIN   the meridian binary; started as
#                  `meridian server --data DIR --listen 127.0.0.1:PORT` with the
#                  AWS_* credentials below. Unset or missing: Meridian rows are
#                  reported as pending.
#   PEERS          peers to run (default "garage garage-nofsync s3s-fs"; see bench/peers.sh);
#                  missing peers are installed with cargo install.
#   TARGETS        subset of "meridian meridian-tls peers files null-http" (default all
#                  but meridian-tls, which needs openssl)
#   WORKLOADS      subset of the names below (default all)
#   DURATION       measured time per run (default 20s; QUICK=1: 3s)
#   LIST_OBJECTS   bucket size for the LIST bar (default 100000; QUICK=1: 10000)
#   BENCH_DIR      scratch directory on the disk under test (default: a new
#                  directory under /var/tmp, removed at the end)
#   OUT            where the JSON reports and the table go (default bench/results/DATE)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=bench/peers.sh
source "$here/peers.sh"

if [[ -n "${QUICK:-}" ]]; then
  DURATION="${DURATION:-3s}"; LIST_OBJECTS="${LIST_OBJECTS:-10000}"
fi
DURATION="${DURATION:-20s}"
LIST_OBJECTS="${LIST_OBJECTS:-100000}"
PEERS="${PEERS:-garage garage-nofsync s3s-fs}"
TARGETS="${TARGETS:-meridian peers files null-http}"
OUT="${OUT:-$repo/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

own_dir=""
if [[ -z "${BENCH_DIR:-}" ]]; then
  BENCH_DIR="$(mktemp -d /var/tmp/meridian-bench.XXXXXX)"; own_dir=1
fi
mkdir -p "$BENCH_DIR"

# Workloads: name | bench arguments.
ALL_WORKLOADS=(
  "put-4k|--workload put --size 4KiB -c 32"
  "get-4k|--workload get --size 4KiB -c 32 --objects 1000"
  "mixed-4k|--workload mixed --size 4KiB -c 32 --objects 1000"
  "put-64m|--workload put --size 64MiB -c 4"
  "get-64m|--workload get --size 64MiB -c 4 --objects 8"
  "multipart-256m|--workload multipart --size 256MiB --part-size 16MiB -c 2"
  "list-1k-of-${LIST_OBJECTS}|--workload list --size 16B -c 1 --list-max-keys 1000 --objects $LIST_OBJECTS --prepare-concurrency 32"
)
WORKLOADS="${WORKLOADS:-put-4k get-4k mixed-4k put-64m get-64m multipart-256m list-1k}"

started_pids=()
cleanup() {
  for p in "${started_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${started_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "$own_dir" ]]; then rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT

echo "building meridian-bench (release)..." >&2
(cd "$repo" && nice -n 10 cargo build --release -q -p meridian-bench)
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
BENCH_BIN="${BENCH_BIN:-$target_dir/release/meridian-bench}"

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"

selected() { # workload name
  local w
  for w in $WORKLOADS; do [[ "$1" == "$w"* ]] && return 0; done
  return 1
}

# run_matrix LABEL TARGET_ARGS [PID]
run_matrix() {
  local label="$1" targs="$2" pid="${3:-}" entry name wargs
  for entry in "${ALL_WORKLOADS[@]}"; do
    name="${entry%%|*}"; wargs="${entry#*|}"
    selected "$name" || continue
    case "$label:$name" in
      null-http:list-*|files:list-*) continue ;;  # no sorted index: not a ceiling for LIST
      garage:list-*)
        # Garage with fsync on stores ~30 small objects/s here: preparing the
        # LIST bucket would take most of an hour. garage-nofsync runs it.
        [[ -z "${GARAGE_FSYNC_LIST:-}" ]] && { echo "== $label / $name skipped (set GARAGE_FSYNC_LIST=1)" >&2; continue; } ;;
    esac
    echo "== $label / $name" >&2
    local extra=()
    [[ -n "$pid" ]] && extra+=(--server-pid "$pid")
    # shellcheck disable=SC2086
    if ! "$BENCH_BIN" $targs $wargs --duration "$DURATION" --json --label "$label" "${extra[@]}" \
         >"$OUT/$label--$name.json" 2>"$OUT/$label--$name.err"; then
      echo "   failed: $(tail -n 3 "$OUT/$label--$name.err")" >&2
      rm -f "$OUT/$label--$name.json"
    fi
  done
}

for t in $TARGETS; do
  case "$t" in
    meridian)
      if [[ -n "${MERIDIAN_BIN:-}" && -x "${MERIDIAN_BIN}" ]]; then
        port="$(free_port)"; mdir="$BENCH_DIR/meridian"; mkdir -p -m 700 "$mdir"  # a node refuses an open data dir
        "$MERIDIAN_BIN" server --data "$mdir" --listen "127.0.0.1:$port" >"$OUT/meridian.log" 2>&1 &
        mpid=$!; started_pids+=("$mpid")
        wait_port 127.0.0.1 "$port" 60 || { echo "meridian did not start; see $OUT/meridian.log" >&2; exit 1; }
        run_matrix meridian "--endpoint http://127.0.0.1:$port --bucket bench --create-bucket" "$mpid"
        kill "$mpid"; wait "$mpid" 2>/dev/null || true
      else
        echo "== meridian: MERIDIAN_BIN not set or not executable; Meridian rows stay pending" >&2
      fi
      ;;
    meridian-tls)
      # The same node behind TLS (HTTP/1.1, one TLS session per bench connection).
      if [[ -n "${MERIDIAN_BIN:-}" && -x "${MERIDIAN_BIN}" ]]; then
        port="$(free_port)"; mdir="$BENCH_DIR/meridian-tls"; mkdir -p -m 700 "$mdir"
        cdir="$BENCH_DIR/meridian-tls-cert"; mkdir -p "$cdir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
          -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
          -keyout "$cdir/node.key" -out "$cdir/node.crt" 2>/dev/null
        "$MERIDIAN_BIN" server --data "$mdir" --listen "127.0.0.1:$port" \
          --tls-cert "$cdir/node.crt" --tls-key "$cdir/node.key" >"$OUT/meridian-tls.log" 2>&1 &
        mpid=$!; started_pids+=("$mpid")
        wait_port 127.0.0.1 "$port" 60 || { echo "meridian did not start; see $OUT/meridian-tls.log" >&2; exit 1; }
        MERIDIAN_CA_FILE="$cdir/node.crt" run_matrix meridian-tls \
          "--endpoint https://127.0.0.1:$port --bucket bench --create-bucket" "$mpid"
        kill "$mpid"; wait "$mpid" 2>/dev/null || true
      else
        echo "== meridian-tls: MERIDIAN_BIN not set or not executable; rows stay pending" >&2
      fi
      ;;
    peers)
      for peer in $PEERS; do
        peer_install "$peer"
        peer_start "$peer" "$BENCH_DIR/$peer"
        started_pids+=("$PEER_PID")
        cp "$PEER_LOG" "$OUT/$peer.log" 2>/dev/null || true
        run_matrix "$peer" "--endpoint $PEER_ENDPOINT --bucket bench --create-bucket" "$PEER_PID"
        kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
      done
      ;;
    files)
      run_matrix files "--target files:$BENCH_DIR/files"
      ;;
    null-http)
      run_matrix null-http "--target null-http"
      ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

python3 "$here/summarize.py" "$OUT" | tee "$OUT/summary.md"
echo "reports: $OUT" >&2
