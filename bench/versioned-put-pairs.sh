#!/usr/bin/env bash
# Versioned against unversioned 4 KiB PUTs (issue 17), each run on a fresh node, in pairs
# (odd pairs unversioned first, even pairs versioned first), PAIRS times. Prints ops/s, server
# CPU µs per PUT and latency percentiles per run; the ratio is versioned / unversioned of each
# pair. (bench/versions.sh
# runs every round on one node, whose data grows run by run; this one does not.)
#
#   MERIDIAN_BIN=target/release/meridian PAIRS=4 bench/versioned-put-pairs.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), BENCH_BIN, PAIRS
# (default 4), DURATION (default 10s), BENCH_DIR. Needs curl (with --aws-sigv4) and python3.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
PAIRS="${PAIRS:-4}"
DURATION="${DURATION:-10s}"
use_meridian
make_scratch versioned-put-pairs
export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"

one() { # run kind (unversioned | versioned)
  local data="$scratch/$1-$2" pid endpoint
  start_node "$data"
  pid="$node_pid"; endpoint="$node_endpoint"
  s3 -X PUT "$endpoint/bench-b" >/dev/null
  if [[ "$2" == versioned ]]; then
    enable_versioning "$endpoint" bench-b
  fi
  "${bench[@]}" --endpoint "$endpoint" --bucket bench-b --workload put --size 4KiB --concurrency 32 \
    --duration "$DURATION" --keep --server-pid "$pid" --json 2>/dev/null >"$scratch/$1-$2.json"
  python3 - "$2" "$scratch/$1-$2.json" <<'PY'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
d = json.load(open(path)); o = d["ops"][0]; l = o["latency_ms"]
print(f"{kind} {o['ops_per_sec']:.0f} PUT/s, server {d['server']['cpu_secs'] / o['count'] * 1e6:.0f} µs/PUT, "
      f"p50 {l['p50']} p99 {l['p99']} p99.9 {l['p999']} ms")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

for n in $(seq "$PAIRS"); do
  # Odd pairs run the unversioned bucket first, even pairs the versioned one: whatever the run
  # before leaves behind (the disk writing back its files, a warmer cache) falls on both kinds.
  if (( n % 2 )); then one "$n" unversioned; one "$n" versioned; else one "$n" versioned; one "$n" unversioned; fi
done
