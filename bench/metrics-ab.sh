#!/usr/bin/env bash
# Small-object GET throughput of two meridian binaries, alternating A, B, A, B... on the same
# machine in one session (issue 13: the cost of the metrics). Same server flags and bench
# arguments as the get-4k row of bench/run-all.sh.
#
#   bench/metrics-ab.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Environment: BENCH_BIN (default: $CARGO_TARGET_DIR or target, release/meridian-bench),
# DURATION (default 10s), WORKLOAD (default "--workload get --size 4KiB -c 32 --objects 1000").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=bench/peers.sh
source "$here/peers.sh"
before="$1"; after="$2"; rounds="${3:-3}"
BENCH_BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-$here/../target}/release/meridian-bench}"
DURATION="${DURATION:-10s}"
WORKLOAD="${WORKLOAD:---workload get --size 4KiB -c 32 --objects 1000}"
export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"
scratch="$(mktemp -d /var/tmp/meridian-ab.XXXXXX)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT

run_one() { # label binary
  local port admin dir
  port="$(free_port)"; admin="$(free_port)"; dir="$scratch/$1"; rm -rf "$dir"; mkdir -p "$dir"
  "$2" server --data "$dir" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >"$scratch/$1.log" 2>&1 &
  pid=$!
  wait_port 127.0.0.1 "$port" 60
  # shellcheck disable=SC2086
  "$BENCH_BIN" --endpoint "http://127.0.0.1:$port" --bucket bench --create-bucket $WORKLOAD \
    --duration "$DURATION" --json --label "$1" --server-pid "$pid" 2>/dev/null |
    python3 -c 'import json,sys; o=json.load(sys.stdin)["ops"][0]; l=o["latency_ms"]; print("%-10s %9.0f ops/s  p50 %.2f ms  p99 %.2f ms  errors %d" % (sys.argv[1], o["ops_per_sec"], l["p50"], l["p99"], o["errors"]))' "$1"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

for round in $(seq "$rounds"); do
  run_one "before-$round" "$before"
  run_one "after-$round" "$after"
done
