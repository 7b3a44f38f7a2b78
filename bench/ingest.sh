#!/usr/bin/env bash
# Large writes and encryption at rest (issue 18), side by side in one run: 64 MiB PUT/GET (c=4)
# and 4 KiB PUT/GET (c=32) against plain files (the ceiling: write, fsync, rename, fsync the
# directory), a Meridian node storing plain bytes, and the same node with SSE-S3
# (`--sse AES256` on every PUT). The targets take turns within each round, ROUNDS rounds, so
# drift of the machine hits them alike; the summary gives each run and the median per target.
#
#   MERIDIAN_BIN=target/release/meridian bench/ingest.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), BENCH_BIN (default
# `$MERIDIAN_BIN bench`), ROUNDS (default 3), DURATION (default 10s per run), WORKLOADS (default
# "put-64m get-64m put-4k get-4k"), BENCH_DIR (where data goes, default /var/tmp), OUT (default
# bench/results/ingest-DATE).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WORKLOADS="${WORKLOADS:-put-64m get-64m put-4k get-4k}"
OUT="${OUT:-$repo/bench/results/ingest-$(date -u +%Y%m%dT%H%M%SZ)}"
use_meridian
mkdir -p "$OUT"
make_scratch ingest

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"
mkdir -p "$scratch/files"
(umask 077 && printf 'master bench %s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$scratch/keyring")
port="$(free_port)"; admin="$(free_port)"
"$MERIDIAN_BIN" server --data "$scratch/node" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --sse-keyring "$scratch/keyring" >"$scratch/node.log" 2>&1 &
pids+=($!)
server_pid=$!
wait_port 127.0.0.1 "$port" 60
endpoint="http://127.0.0.1:$port"

workload_args() { # workload name -> bench flags
  case "$1" in
    put-64m) echo "--workload put --size 64MiB --concurrency 4" ;;
    get-64m) echo "--workload get --size 64MiB --concurrency 4 --objects 8" ;;
    put-4k) echo "--workload put --size 4KiB --concurrency 32" ;;
    get-4k) echo "--workload get --size 4KiB --concurrency 32 --objects 1000" ;;
    *) echo "unknown workload $1" >&2; exit 1 ;;
  esac
}

run() { # target workload round
  local label="$2-$1-r$3" target_args
  case "$1" in
    files) target_args=(--target "files:$scratch/files") ;;
    plain) target_args=(--endpoint "$endpoint" --server-pid "$server_pid") ;;
    sse-s3) target_args=(--endpoint "$endpoint" --server-pid "$server_pid" --sse AES256) ;;
  esac
  # shellcheck disable=SC2046
  "${bench[@]}" "${target_args[@]}" --bucket "ingest-$RANDOM" --create-bucket $(workload_args "$2") \
    --duration "$DURATION" --json --label "$label" >"$OUT/$label.json" 2>"$OUT/$label.log"
}

for workload in $WORKLOADS; do
  for round in $(seq 1 "$ROUNDS"); do
    for target in files plain sse-s3; do
      run "$target" "$workload" "$round"
    done
  done
done

python3 - "$OUT" "$WORKLOADS" "$ROUNDS" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, workloads, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
print("| workload | target | runs (MiB/s or ops/s) | median | / files | / plain | errors |")
print("|---|---|---|---:|---:|---:|---:|")
for w in workloads:
    big = w.endswith("64m")
    medians = {}
    for t in ("files", "plain", "sse-s3"):
        values, errors = [], 0
        for r in range(1, rounds + 1):
            op = json.load(open(f"{out}/{w}-{t}-r{r}.json"))["ops"][0]
            values.append(op["mib_per_sec"] if big else op["ops_per_sec"])
            errors += op["errors"]
        medians[t] = statistics.median(values)
        rel = lambda base: "%.2f" % (medians[t] / medians[base]) if t != base and medians.get(base) else ""
        print("| %s | %s | %s | %.0f | %s | %s | %d |" % (
            w, t, ", ".join("%.0f" % v for v in values), medians[t], rel("files"), rel("plain"), errors))
EOF
