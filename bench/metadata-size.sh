#!/usr/bin/env bash
# What one object costs in the metadata store (issue 16, "metadata at scale"): PUTs N objects of
# two sizes into a node on etcd and into a node on the embedded store, then measures
#   - etcd: dbSizeInUse after compaction and defragmentation (etcd's own accounting; its quota
#     applies to dbSize), and the raw key and value bytes of the records;
#   - embedded: the growth of DATA/meta.redb.
# Sizes: SMALL (default 100 B: inline in both stores) and LARGE (default 40KiB: above both
# inline limits, so a record plus a blob). Everything runs on this machine.
#
#   MERIDIAN_BIN=target/release/meridian N=20000 bench/metadata-size.sh
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/debug/meridian: sizes do not depend on
# the build), N (objects per size, default 20000), SMALL, LARGE, HISTORY (the embedded node's
# --history-revisions, default 1000 so its change history does not count as record cost). Needs etcd,
# etcdctl, curl, python3.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
N="${N:-20000}"
SMALL="${SMALL:-100B}"
LARGE="${LARGE:-40KiB}"
HISTORY="${HISTORY:-1000}"
for tool in etcd etcdctl curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
use_meridian debug
make_scratch metadata-size
export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"

client_port="$(free_port)"; peer_port="$(free_port)"
etcd --name m --data-dir "$scratch/etcd" --quota-backend-bytes $((8 << 30)) \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "m=http://127.0.0.1:$peer_port" >"$scratch/etcd.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$client_port" 30 || { echo "etcd did not start:" >&2; tail -5 "$scratch/etcd.log" >&2; exit 1; }
etcd_url="http://127.0.0.1:$client_port"
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" "$@"; }

endpoint=""
start_node() { # name extra-args...
  local name="$1"; shift
  local port admin
  port="$(free_port)"; admin="$(free_port)"
  "$MERIDIAN_BIN" server --data "$scratch/$name" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    "$@" >"$scratch/$name.log" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$port" 60 || { echo "node $name did not start:" >&2; tail -5 "$scratch/$name.log" >&2; exit 1; }
  endpoint="http://127.0.0.1:$port"
}

put_objects() { # endpoint bucket size
  "$MERIDIAN_BIN" bench --endpoint "$1" --bucket "$2" --create-bucket --workload put --size "$3" \
    --objects "$N" --ops "$N" --concurrency 16 --keep --json --label "$2" >"$scratch/$2.json" 2>"$scratch/$2.log"
}

# etcd's size in use after compacting away history and defragmenting.
etcd_in_use() {
  local rev
  rev="$(etcdctl_ endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')"
  etcdctl_ compact "$rev" >/dev/null 2>&1 || true
  etcdctl_ defrag >/dev/null
  etcdctl_ endpoint status -w json | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s.get("dbSizeInUse", s["dbSize"]))'
}

# Raw bytes of every key and value under a prefix, and their count.
etcd_raw() { # prefix
  etcdctl_ get --prefix "$1" -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
k = sum(len(base64.b64decode(kv["key"])) for kv in kvs)
v = sum(len(base64.b64decode(kv.get("value", ""))) for kv in kvs)
print(len(kvs), k, v)'
}

redb_size() { stat -c %s "$scratch/embedded/meta.redb"; }

start_node etcd-node --etcd "$etcd_url" --cluster-token "metadata-size-token-0123456789"
on_etcd="$endpoint"
start_node embedded --history-revisions "$HISTORY"
on_embedded="$endpoint"

echo "N=$N objects per size; key names like meridian-bench/<8 hex>/w0000-000000001 (36 bytes)"
echo
echo "| store | object size | bytes per object | raw keys+values per object | keys per object |"
echo "|---|---|---|---|---|"
for size in "$SMALL" "$LARGE"; do
  bucket="size-$(echo "$size" | tr 'A-Z' 'a-z')"
  before="$(etcd_in_use)"
  read -r c0 k0 v0 < <(etcd_raw /meridian/)
  put_objects "$on_etcd" "e-$bucket" "$size"
  after="$(etcd_in_use)"
  read -r c1 k1 v1 < <(etcd_raw /meridian/)
  python3 - "$before" "$after" "$N" "$size" "$c0" "$k0" "$v0" "$c1" "$k1" "$v1" <<'EOF'
import sys
before, after, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c0, k0, v0, c1, k1, v1 = map(int, sys.argv[5:11])
print(f"| etcd (in use, compacted) | {sys.argv[4]} | {(after - before) / n:.0f} | {(k1 - k0 + v1 - v0) / n:.0f} | {(c1 - c0) / n:.1f} |")
EOF
  before="$(redb_size)"
  put_objects "$on_embedded" "m-$bucket" "$size"
  after="$(redb_size)"
  python3 -c 'import sys; b,a,n=map(int,sys.argv[1:4]); print(f"| embedded (redb file growth) | {sys.argv[4]} | {(a-b)/n:.0f} | | |")' \
    "$before" "$after" "$N" "$size"
done
