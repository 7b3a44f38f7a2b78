#!/usr/bin/env bash
# Peer S3 servers to compare Meridian with, installed from crates.io and
# started on a free loopback port with known credentials.
#
#   bench/peers.sh install garage|s3s-fs      build and install into $PEERS_ROOT/bin
#   bench/peers.sh start garage|s3s-fs DIR    start one; prints PID=, ENDPOINT=, LOG=
#
# Or source it and call peer_install / peer_start (run-all.sh does).
#
# Peers:
#   garage  Garage 2.5 (Deuxfleurs): a self-hosted, geo-distributed S3 store in
#           Rust, the closest peer to Meridian. Single node, replication 1, LMDB
#           metadata. data_fsync and metadata_fsync are turned ON (Garage's
#           defaults are off) so it makes the same durability promise Meridian
#           does, and zstd compression is off (Meridian does not compress; the
#           bench payload is random anyway).
#   garage-nofsync  the same with Garage's default fsync settings (off): what
#           Garage users get out of the box, without single-node durability.
#   s3s-fs  the file-system sample server of the s3s crate (which Meridian's
#           S3 front end also uses): a lower bound "S3 over files" with no
#           metadata database and no fsync. Informative, not a product peer.
set -euo pipefail

PEERS_ROOT="${PEERS_ROOT:-$HOME/.cache/meridian-bench}"
GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"   # 0.15+ needs a newer Rust than 1.95
BENCH_ACCESS_KEY="${BENCH_ACCESS_KEY:-GKmeridianbench000000001}"
BENCH_SECRET_KEY="${BENCH_SECRET_KEY:-meridian-bench-secret-key-0123456789abcdef}"
export BENCH_ACCESS_KEY BENCH_SECRET_KEY

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

peer_bin() {
  case "$1" in
    garage|garage-nofsync) echo "$PEERS_ROOT/bin/garage" ;;
    s3s-fs) echo "$PEERS_ROOT/bin/s3s-fs" ;;
    *) echo "unknown peer $1 (garage, garage-nofsync, s3s-fs)" >&2; return 2 ;;
  esac
}

peer_install() {
  local bin; bin="$(peer_bin "$1")"
  if [[ -x "$bin" ]]; then return 0; fi
  mkdir -p "$PEERS_ROOT"
  echo "installing peer $1 into $PEERS_ROOT (cargo install; takes a while on 2 cores)" >&2
  case "$1" in
    garage|garage-nofsync)
      nice -n 10 cargo install --locked --root "$PEERS_ROOT" garage --version "$GARAGE_VERSION" \
        --no-default-features --features bundled-libs,lmdb >&2 ;;
    s3s-fs)
      nice -n 10 cargo install --locked --root "$PEERS_ROOT" s3s-fs --version "$S3S_FS_VERSION" \
        --features binary >&2 ;;
  esac
  [[ -x "$bin" ]] || { echo "peer $1 did not install" >&2; return 1; }
}

# peer_start NAME DIR -> sets PEER_PID, PEER_ENDPOINT, PEER_LOG
peer_start() {
  local name="$1" dir="$2" bin port
  bin="$(peer_bin "$name")"
  [[ -x "$bin" ]] || { echo "peer $name is not installed: bench/peers.sh install $name" >&2; return 1; }
  mkdir -p "$dir"
  port="$(free_port)"
  PEER_LOG="$dir/$name.log"
  case "$name" in
    garage|garage-nofsync)
      local rpc admin cfg fsync=true
      [[ "$name" == garage-nofsync ]] && fsync=false
      rpc="$(free_port)"; admin="$(free_port)"; cfg="$dir/garage.toml"
      cat >"$cfg" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
metadata_fsync = $fsync
data_fsync = $fsync
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
EOF
      "$bin" -c "$cfg" server >"$PEER_LOG" 2>&1 &
      PEER_PID=$!
      wait_port 127.0.0.1 "$admin" 30 || { echo "garage did not start; see $PEER_LOG" >&2; return 1; }
      local node
      for _ in $(seq 1 50); do
        node="$("$bin" -c "$cfg" node id -q 2>/dev/null | cut -d@ -f1)" && [[ -n "$node" ]] && break
        sleep 0.2
      done
      [[ -n "${node:-}" ]] || { echo "garage: no node id; see $PEER_LOG" >&2; return 1; }
      {
        "$bin" -c "$cfg" layout assign -z dc1 -c 10G "$node"
        "$bin" -c "$cfg" layout apply --version 1
        "$bin" -c "$cfg" key import --yes -n bench "$BENCH_ACCESS_KEY" "$BENCH_SECRET_KEY"
        "$bin" -c "$cfg" key allow --create-bucket bench
      } >>"$PEER_LOG" 2>&1 || { echo "garage setup failed; see $PEER_LOG" >&2; return 1; }
      ;;
    s3s-fs)
      mkdir -p "$dir/root"
      "$bin" --host 127.0.0.1 --port "$port" \
        --access-key "$BENCH_ACCESS_KEY" --secret-key "$BENCH_SECRET_KEY" \
        "$dir/root" >"$PEER_LOG" 2>&1 &
      PEER_PID=$!
      ;;
  esac
  wait_port 127.0.0.1 "$port" 30 || { echo "$name did not listen on $port; see $PEER_LOG" >&2; return 1; }
  PEER_ENDPOINT="http://127.0.0.1:$port"
  export PEER_PID PEER_ENDPOINT PEER_LOG
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  cmd="${1:-}"; shift || true
  case "$cmd" in
    install) peer_install "${1:?peer name}" ;;
    start)
      peer_start "${1:?peer name}" "${2:?data dir}"
      echo "PID=$PEER_PID"
      echo "ENDPOINT=$PEER_ENDPOINT"
      echo "LOG=$PEER_LOG"
      echo "AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY"
      echo "AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY"
      ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
fi
