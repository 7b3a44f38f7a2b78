#!/usr/bin/env bash
# What a bucket policy costs a request: 4 KiB GETs (c=32) in a bucket without a policy and in
# one with a four-statement policy, on one node, taking turns ROUNDS rounds. Prints GET/s and
# the server's CPU µs per GET for each run. None of the statements matches the bench's
# requests (two test source addresses from documentation ranges, one a key prefix the bench
# does not use, one a User-Agent it does not send), so every GET evaluates all four and is
# then allowed by its key's own rights.
#
#   MERIDIAN_BIN=target/release/meridian bench/policy-cost.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), BENCH_BIN, ROUNDS
# (default 2), DURATION (default 8s), BENCH_DIR. Needs curl (with --aws-sigv4) and python3.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8s}"
use_meridian
make_scratch policy-cost
export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"

start_node "$scratch/node"
endpoint="$node_endpoint"
for bucket in plain withpolicy; do s3 -X PUT "$endpoint/$bucket" >/dev/null; done
s3 -X PUT "$endpoint/withpolicy?policy=" --data-binary @"$(dirname "$0")/policy-cost.json"

for round in $(seq "$ROUNDS"); do
  for bucket in plain withpolicy; do
    "${bench[@]}" --endpoint "$endpoint" --bucket "$bucket" --workload get --size 4KiB --concurrency 32 \
      --objects 1000 --duration "$DURATION" --keep --server-pid "$node_pid" --json 2>/dev/null >"$scratch/$bucket-$round.json"
    python3 - "$bucket" "$scratch/$bucket-$round.json" <<'PY'
import json, sys
bucket, path = sys.argv[1], sys.argv[2]
d = json.load(open(path)); o = d["ops"][0]
print(f"{bucket} {o['ops_per_sec']:.0f} GET/s, server {d['server']['cpu_secs'] / o['count'] * 1e6:.0f} µs/GET")
PY
  done
done
