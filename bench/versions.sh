#!/usr/bin/env bash
# Versions, snapshots and forks (issue 17), in one run on one node:
#   1. 4 KiB PUT and GET (c=32) in an unversioned and a versioned bucket, taking turns ROUNDS
#      rounds, which one goes first alternating (the goal: versioned within 10% of unversioned);
#   2. ListObjectVersions of one key's 1,000 versions, and ListObjectsV2 of 1,000 keys beside it
#      (LISTS timed requests each, p50 and p90);
#   3. `meridian admin bucket snapshot` and `fork` of versioned buckets holding each of SIZES
#      objects (REPEAT timed commands each, median): the time must not grow with the bucket.
#
#   MERIDIAN_BIN=target/release/meridian bench/versions.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), BENCH_BIN (default
# `$MERIDIAN_BIN bench`), ROUNDS (default 3), DURATION (default 10s per run), LISTS (default
# 200), SIZES (default "1000 10000 100000"), REPEAT (default 5), PARTS (default "ab list snap":
# which of parts 1, 2 and 3 to run), BENCH_DIR (default /var/tmp),
# OUT (default bench/results/versions-DATE). Needs curl (with --aws-sigv4) and python3.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
LISTS="${LISTS:-200}"
SIZES="${SIZES:-1000 10000 100000}"
REPEAT="${REPEAT:-5}"
PARTS="${PARTS:-ab list snap}"
OUT="${OUT:-$repo/bench/results/versions-$(date -u +%Y%m%dT%H%M%SZ)}"
use_meridian
mkdir -p "$OUT"
make_scratch versions

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"
start_node "$scratch/node"
server_pid="$node_pid"
endpoint="$node_endpoint"

admin() { "$MERIDIAN_BIN" admin --url "http://127.0.0.1:$node_admin_port" --data "$scratch/node" "$@"; }
versioned_bucket() { # name
  s3 -X PUT "$endpoint/$1" >/dev/null
  enable_versioning "$endpoint" "$1"
}
fill() { # bucket objects
  "${bench[@]}" --endpoint "$endpoint" --bucket "$1" --workload put --size 1KiB --concurrency 32 --ops "$2" \
    --prefix fill/ --keep --no-progress >/dev/null 2>>"$OUT/fill.log"
}

# 1. PUT and GET of 4 KiB, unversioned and versioned.
run() { # kind workload round
  local label="$2-$1-r$3" bucket="ab-$1-$2-$3"
  local args=(--bucket "$bucket")
  if [[ "$1" == versioned ]]; then versioned_bucket "$bucket"; else args+=(--create-bucket); fi
  case "$2" in
    put-4k) args+=(--workload put --size 4KiB --concurrency 32) ;;
    get-4k) args+=(--workload get --size 4KiB --concurrency 32 --objects 1000) ;;
  esac
  "${bench[@]}" --endpoint "$endpoint" --server-pid "$server_pid" "${args[@]}" --keep --duration "$DURATION" \
    --json --label "$label" >"$OUT/$label.json" 2>"$OUT/$label.log"
}
for workload in put-4k get-4k; do
  [[ " $PARTS " == *" ab "* ]] || break
  for round in $(seq 1 "$ROUNDS"); do
    # Odd rounds run the unversioned bucket first, even rounds the versioned one.
    kinds=(unversioned versioned)
    (( round % 2 )) || kinds=(versioned unversioned)
    for kind in "${kinds[@]}"; do run "$kind" "$workload" "$round"; done
  done
done

# 2. Listing 1,000 versions of one key, and 1,000 keys.
if [[ " $PARTS " == *" list "* ]]; then
versioned_bucket vlist
"${bench[@]}" --endpoint "$endpoint" --bucket vlist --workload put --size 1KiB --put-keys 1 --concurrency 8 \
  --ops 1000 --prefix one/ --keep --no-progress >/dev/null 2>>"$OUT/fill.log"
s3 -X PUT "$endpoint/klist" >/dev/null
fill klist 1000
time_requests() { # url file
  for _ in $(seq 1 "$LISTS"); do
    s3 -o /dev/null -w '%{time_total}\n' "$1"
  done >"$2"
}
count_versions() { s3 "$endpoint/vlist?max-keys=1000&versions=" | grep -o '<Version>' | wc -l; }
# The load generator may stop an op or two short of --ops: top up to exactly 1,000 versions.
# (The first <Key> read whole: `grep | head -1` under pipefail fails when head closes the pipe.)
key="$(s3 "$endpoint/vlist?max-keys=1000&versions=" \
  | python3 -c 'import re, sys; print(re.search(r"<Key>([^<]*)</Key>", sys.stdin.read()).group(1))')"
for _ in $(seq 1 100); do
  [[ "$(count_versions)" -ge 1000 ]] && break
  s3 -X PUT --data-binary 'top-up' "$endpoint/vlist/$key" >/dev/null
done
versions="$(count_versions)"
[[ "$versions" -eq 1000 ]] || { echo "expected 1000 versions listed, got $versions" >&2; exit 1; }
time_requests "$endpoint/vlist?max-keys=1000&versions=" "$OUT/list-versions.txt"
time_requests "$endpoint/klist?list-type=2&max-keys=1000" "$OUT/list-keys.txt"
fi

# 3. Snapshot and fork as the bucket grows.
for size in $SIZES; do
  [[ " $PARTS " == *" snap "* ]] || break
  versioned_bucket "snap$size"
  fill "snap$size" "$size"
  for n in $(seq 1 "$REPEAT"); do
    start=$(date +%s%N); admin bucket snapshot "snap$size" --name "s$n" >/dev/null; end=$(date +%s%N)
    echo "snapshot $size $(( (end - start) / 1000 ))" >>"$OUT/snapshot-fork.txt"
    start=$(date +%s%N); admin bucket fork "snap$size@s$n" "fork$size-$n" >/dev/null; end=$(date +%s%N)
    echo "fork $size $(( (end - start) / 1000 ))" >>"$OUT/snapshot-fork.txt"
  done
  listed="$(admin --json bucket ls "fork$size-1" --prefix fill/ | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
  [[ "$listed" -eq "$size" ]] || { echo "fork of $size objects lists $listed" >&2; exit 1; }
done

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| workload | bucket | runs (ops/s) | median | / unversioned | p50 ms (median run) | errors |")
print("|---|---|---|---:|---:|---:|---:|")
import os
for w in ("put-4k", "get-4k"):
    if not os.path.exists(f"{out}/{w}-unversioned-r1.json"):
        continue
    medians = {}
    for kind in ("unversioned", "versioned"):
        reports = [json.load(open(f"{out}/{w}-{kind}-r{r}.json"))["ops"][0] for r in range(1, rounds + 1)]
        values = [op["ops_per_sec"] for op in reports]
        medians[kind] = statistics.median(values)
        mid = sorted(reports, key=lambda op: op["ops_per_sec"])[len(reports) // 2]
        rel = "%.2f" % (medians[kind] / medians["unversioned"]) if kind == "versioned" else ""
        errors = sum(op["errors"] for op in reports)
        print("| %s | %s | %s | %.0f | %s | %.2f | %d |" % (
            w, kind, ", ".join("%.0f" % v for v in values), medians[kind], rel, mid["latency_ms"]["p50"], errors))
print()
print("| listing (1,000 entries) | p50 ms | p90 ms |")
print("|---|---:|---:|")
for name, label in (("list-versions", "ListObjectVersions, one key's 1,000 versions"),
                    ("list-keys", "ListObjectsV2, 1,000 keys")):
    if not os.path.exists(f"{out}/{name}.txt"):
        continue
    times = sorted(float(t) * 1000 for t in open(f"{out}/{name}.txt"))
    print("| %s | %.2f | %.2f |" % (label, times[len(times) // 2], times[int(len(times) * 0.9)]))
print()
print("| command | objects in the bucket | median ms (runs) |")
print("|---|---:|---|")
rows = {}
lines = open(f"{out}/snapshot-fork.txt") if os.path.exists(f"{out}/snapshot-fork.txt") else []
for line in lines:
    what, size, micros = line.split()
    rows.setdefault((what, int(size)), []).append(int(micros) / 1000)
for (what, size), ms in sorted(rows.items()):
    print("| %s | %d | %.1f (%s) |" % (what, size, statistics.median(ms), ", ".join("%.0f" % m for m in ms)))
EOF
