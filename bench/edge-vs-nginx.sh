#!/usr/bin/env bash
# Cached asset GETs from Meridian's web edge against nginx serving the same files from disk on
# the same machine, side by side in one run (issue 14): 4 KiB and 1 MiB objects, c=32.
#
#   MERIDIAN_BIN=target/release/meridian bench/edge-vs-nginx.sh
#
# The objects are prepared once through Meridian's S3 port (meridian-bench --mirror-dir writes
# the same bytes under nginx's root at the same paths); then meridian-bench measures unsigned
# GETs of them (--read-endpoint) from the edge (a site mounting bucket `bench` at /bench) and
# from nginx. Both write an access log line per request.
#
# Environment: MERIDIAN_BIN (default $CARGO_TARGET_DIR/release/meridian), DURATION (default
# 20s), OUT (default bench/results/edge-DATE), BENCH_DIR (scratch, default a new /var/tmp dir).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH_BIN="${BENCH_BIN:-$target_dir/release/meridian-bench}"
DURATION="${DURATION:-20s}"
OUT="${OUT:-$repo/bench/results/edge-$(date -u +%Y%m%dT%H%M%SZ)}"
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)" >&2; exit 1; }
use_meridian
[[ -x "$BENCH_BIN" ]] || { echo "BENCH_BIN=$BENCH_BIN is not executable (cargo build --release -p meridian-bench)" >&2; exit 1; }
mkdir -p "$OUT"
own_dir=""
if [[ -z "${BENCH_DIR:-}" ]]; then BENCH_DIR="$(mktemp -d /var/tmp/meridian-edge-bench.XXXXXX)"; own_dir=1; fi
mkdir -p "$BENCH_DIR/www" "$BENCH_DIR/nginx"
# nginx started as root serves from unprivileged workers: they must be able to enter the tree.
chmod 755 "$BENCH_DIR"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "$own_dir" ]]; then rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT

s3_port="$(free_port)"; admin_port="$(free_port)"; web_port="$(free_port)"; nginx_port="$(free_port)"
cat >"$BENCH_DIR/meridian.toml" <<TOML
[[site]]
name = "bench"
bucket = "bench"
path_prefix = "/bench"
TOML
AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY" \
  "$MERIDIAN_BIN" server --data "$BENCH_DIR/meridian" --listen "127.0.0.1:$s3_port" \
  --admin-listen "127.0.0.1:$admin_port" --web-listen "127.0.0.1:$web_port" \
  --config "$BENCH_DIR/meridian.toml" >"$OUT/meridian.log" 2>&1 &
meridian_pid=$!; pids+=("$meridian_pid")
wait_port 127.0.0.1 "$web_port" 60 || { echo "meridian did not start; see $OUT/meridian.log" >&2; exit 1; }

cat >"$BENCH_DIR/nginx/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $BENCH_DIR/nginx/nginx.pid;
error_log $BENCH_DIR/nginx/error.log;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  access_log $BENCH_DIR/nginx/access.log;
  client_body_temp_path $BENCH_DIR/nginx/body;
  proxy_temp_path $BENCH_DIR/nginx/proxy;
  fastcgi_temp_path $BENCH_DIR/nginx/fastcgi;
  uwsgi_temp_path $BENCH_DIR/nginx/uwsgi;
  scgi_temp_path $BENCH_DIR/nginx/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$nginx_port; root $BENCH_DIR/www; }
}
CONF
nginx -p "$BENCH_DIR/nginx" -c "$BENCH_DIR/nginx/nginx.conf" &
nginx_pid=$!; pids+=("$nginx_pid")
wait_port 127.0.0.1 "$nginx_port" 30 || { echo "nginx did not start; see $BENCH_DIR/nginx/error.log" >&2; exit 1; }

export AWS_ACCESS_KEY_ID="$BENCH_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$BENCH_SECRET_KEY"
s3="http://127.0.0.1:$s3_port"
# name | size | objects
for entry in "get-4k|4KiB|1000" "get-1m|1MiB|200"; do
  IFS='|' read -r name size objects <<<"$entry"
  common=(--endpoint "$s3" --bucket bench --workload get --size "$size" --objects "$objects" -c 32
          --duration "$DURATION" --prefix "$name/" --keep --json)
  echo "== edge / $name" >&2
  "$BENCH_BIN" "${common[@]}" --create-bucket --mirror-dir "$BENCH_DIR/www" \
    --read-endpoint "http://127.0.0.1:$web_port" --label edge --server-pid "$meridian_pid" \
    >"$OUT/edge--$name.json"
  echo "== nginx / $name" >&2
  "$BENCH_BIN" "${common[@]}" --prepared --read-endpoint "http://127.0.0.1:$nginx_port" \
    --label nginx --server-pid "$nginx_pid" >"$OUT/nginx--$name.json"
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| workload | edge ops/s | nginx ops/s | edge / nginx | edge p50 / p99 ms | nginx p50 / p99 ms | errors (edge, nginx) |")
print("|---|---|---|---|---|---|---|")
for name in ["get-4k", "get-1m"]:
    edge = json.loads((out / f"edge--{name}.json").read_text())
    nginx = json.loads((out / f"nginx--{name}.json").read_text())
    lat = lambda r: next(o["latency_ms"] for o in r["ops"] if o["op"] == "get")
    e, n = edge["total"], nginx["total"]
    print(f"| {name} c=32 | {e['ops_per_sec']:.0f} | {n['ops_per_sec']:.0f} | {e['ops_per_sec'] / n['ops_per_sec']:.0%} "
          f"| {lat(edge)['p50']:.2f} / {lat(edge)['p99']:.2f} | {lat(nginx)['p50']:.2f} / {lat(nginx)['p99']:.2f} "
          f"| {e['errors']}, {n['errors']} |")
PY
echo "reports: $OUT" >&2
