#!/usr/bin/env bash
# Migration rate of `meridian migrate` (issue 16): OBJECTS objects of SIZE bytes in a bucket
# of moto's S3 server, copied into a Meridian node on this machine; prints the rate line of
# `meridian migrate` (objects/s, MiB/s) and its report.
#
#   MERIDIAN_BIN=target/release/meridian bench/migrate.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), OBJECTS (default
# 10000), SIZE (bytes, default 4096), PARALLEL (default 16). Needs moto_server and boto3
# (pip install 'moto[server]' brings both) and curl.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
OBJECTS="${OBJECTS:-10000}"
SIZE="${SIZE:-4096}"
PARALLEL="${PARALLEL:-16}"
command -v moto_server >/dev/null || { echo "moto_server is missing (pip install 'moto[server]')" >&2; exit 1; }
use_meridian
make_scratch migrate

moto_port="$(free_port)"
moto_server -H 127.0.0.1 -p "$moto_port" >"$scratch/moto.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$moto_port" 60
moto="http://127.0.0.1:$moto_port"

echo "filling $moto/source with $OBJECTS objects of $SIZE bytes" >&2
python3 - "$moto" "$OBJECTS" "$SIZE" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="moto", aws_secret_access_key="moto")
s3.create_bucket(Bucket="source")
def put(i):
    s3.put_object(Bucket="source", Key=f"obj/{i:07}", Body=os.urandom(size), ContentType="application/octet-stream")
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, range(count)))
PY

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"
port="$(free_port)"; admin="$(free_port)"
"$MERIDIAN_BIN" server --data "$scratch/node" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  >"$scratch/node.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$port" 60
curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$BENCH_ACCESS_KEY:$BENCH_SECRET_KEY" \
  -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "http://127.0.0.1:$port/moved" >/dev/null

MERIDIAN_MIGRATE_SOURCE_ACCESS_KEY=moto MERIDIAN_MIGRATE_SOURCE_SECRET_KEY=moto \
  "$MERIDIAN_BIN" migrate --source-endpoint "$moto" --source-bucket source \
  --endpoint "http://127.0.0.1:$port" --bucket moved --parallel "$PARALLEL" \
  --checkpoint "$scratch/checkpoint.json" --progress-every 5s
