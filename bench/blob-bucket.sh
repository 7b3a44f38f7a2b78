#!/usr/bin/env bash
# What a Meridian node adds in front of the S3 service holding its bytes (issue 16): PUT and GET
# of 4 KiB and 64 MiB objects against moto's S3 server directly, and against a Meridian node
# whose blob bucket (--blob-s3-bucket) is on that moto; then the same with another Meridian as
# the backend. Everything runs on this machine.
#
#   MERIDIAN_BIN=target/release/meridian bench/blob-bucket.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), BENCH_BIN (default
# `$MERIDIAN_BIN bench`), DURATION_LARGE (64 MiB runs, default 30s), DURATION
# (default 10s per run), OUT (default bench/results/blob-bucket-DATE). Needs moto_server
# (pip install 'moto[server]') and curl.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
DURATION="${DURATION:-10s}"
DURATION_LARGE="${DURATION_LARGE:-30s}"
OUT="${OUT:-$repo/bench/results/blob-bucket-$(date -u +%Y%m%dT%H%M%SZ)}"
command -v moto_server >/dev/null || { echo "moto_server is missing (pip install 'moto[server]')" >&2; exit 1; }
use_meridian
mkdir -p "$OUT"
make_scratch blob-bucket

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"

started=""
start_meridian() { # name extra-args... ; sets $started to the endpoint
  local name="$1"; shift
  local port admin
  port="$(free_port)"; admin="$(free_port)"
  "$MERIDIAN_BIN" server --data "$scratch/$name" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    "$@" >"$scratch/$name.log" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$port" 60
  started="http://127.0.0.1:$port"
}

create_bucket() { # endpoint bucket
  curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$BENCH_ACCESS_KEY:$BENCH_SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "$1/$2" >/dev/null
}

run() { # label endpoint workload size objects duration
  "${bench[@]}" --endpoint "$2" --bucket "bench-$RANDOM" --create-bucket --workload "$3" --size "$4" \
    --objects "$5" --concurrency 8 --duration "$6" --json --label "$1" >"$OUT/$1.json" 2>"$OUT/$1.log"
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["ops"][0]; l=o["latency_ms"]; print("| %s | %.0f | %.1f | %.2f | %.2f | %d |" % (sys.argv[2], o["ops_per_sec"], o.get("mib_per_sec", 0), l["p50"], l["p99"], o["errors"]))' "$OUT/$1.json" "$1"
}

small() { # prefix endpoint
  run "$1-put-4k" "$2" put 4KiB 1000 "$DURATION"
  run "$1-get-4k" "$2" get 4KiB 1000 "$DURATION"
}

matrix() { # prefix endpoint
  small "$1" "$2"
  run "$1-put-64m" "$2" put 64MiB 8 "$DURATION_LARGE"
  run "$1-get-64m" "$2" get 64MiB 8 "$DURATION_LARGE"
}

moto_port="$(free_port)"
moto_server -H 127.0.0.1 -p "$moto_port" >"$scratch/moto.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$moto_port" 60
moto="http://127.0.0.1:$moto_port"
create_bucket "$moto" blobs
start_meridian backend
backend="$started"
create_bucket "$backend" blobs
start_meridian on-moto --blob-s3-endpoint "$moto" --blob-s3-bucket blobs --blob-s3-prefix bench \
  --blob-s3-access-key moto --blob-s3-secret-key moto
on_moto="$started"
start_meridian on-meridian --blob-s3-endpoint "$backend" --blob-s3-bucket blobs --blob-s3-prefix bench \
  --blob-s3-access-key "$BENCH_ACCESS_KEY" --blob-s3-secret-key "$BENCH_SECRET_KEY"
on_meridian="$started"
# The same node on moto with nothing inline: 4 KiB objects go to the bucket too.
start_meridian on-moto-no-inline --inline-max 0 --blob-s3-endpoint "$moto" --blob-s3-bucket blobs \
  --blob-s3-prefix bench-no-inline --blob-s3-access-key moto --blob-s3-secret-key moto
on_moto_no_inline="$started"

{
  echo "| run | ops/s | MiB/s | p50 ms | p99 ms | errors |"
  echo "|---|---|---|---|---|---|"
  matrix moto "$moto"
  matrix node-on-moto "$on_moto"
  small node-on-moto-no-inline "$on_moto_no_inline"
  matrix meridian "$backend"
  matrix node-on-meridian "$on_meridian"
} | tee "$OUT/summary.md"
