#!/usr/bin/env bash
# pgbench on Postgres whose data directory is on ext4 on a Meridian volume, against the same on
# ext4 in a local image file. Both filesystems are mounted with fuse2fs, so the only difference
# is the block device under ext4: the volume (`meridian volume serve` backed by a local
# `meridian server`, exposed as a file by nbdfuse) or a plain file on local disk.
#
#   bench/pgbench-volume.sh
#
# Env: MERIDIAN_BIN (default ${CARGO_TARGET_DIR:-target}/release/meridian; build with `cargo build
# --release -p meridian`), SCALE (pgbench scale factor, 20 ≈ 300 MiB), CLIENTS (8), RUNTIME
# (seconds, 60), DISK_SIZE (4G), BENCH_DIR (scratch, kept; default a temp dir removed at exit).
# Needs root (fuse mounts, Postgres run as the `postgres` user), Debian packages postgresql,
# nbdfuse (libnbd-bin), fuse2fs, e2fsprogs. Only loopback addresses and Unix sockets are used.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-8}
RUNTIME=${RUNTIME:-60}
DISK_SIZE=${DISK_SIZE:-4G}
BIN=${MERIDIAN_BIN:-${CARGO_TARGET_DIR:-target}/release/meridian}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
for t in nbdfuse fuse2fs mkfs.ext4 mountpoint; do
    command -v $t >/dev/null || { echo "missing $t: apt-get install -y libnbd-bin fuse2fs e2fsprogs" >&2; exit 1; }
done
[ -x "$PG_BIN/initdb" ] || { echo "missing Postgres: apt-get install -y postgresql" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p meridian" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (fuse mounts, Postgres as user postgres)" >&2; exit 1; }

OWN_DIR=""
if [ -z "${BENCH_DIR:-}" ]; then OWN_DIR=$(mktemp -d /tmp/meridian-pgbench.XXXXXX); fi
DIR=${BENCH_DIR:-$OWN_DIR}
mkdir -p "$DIR"
chmod 711 "$DIR" # Postgres (user postgres) reaches its mounts below; the volume cache stays owner-only
PIDS=()
MOUNTS=()
PGDATA_RUNNING=""
cleanup() {
    if [ -n "$PGDATA_RUNNING" ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_RUNNING" -m fast stop >/dev/null 2>&1 || true; fi
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$OWN_DIR" ]; then rm -rf "$OWN_DIR"; fi
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecretbenchsecret
export MERIDIAN_VOLUME_BUCKET=bench MERIDIAN_VOLUME_CACHE="$DIR/cache" RUST_LOG=warn

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wait_for() { for _ in $(seq 300); do eval "$1" && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }

# ext4 on the image or device file $1, mounted at $2 with fuse2fs, a Postgres data directory
# in it; sets RESULT to "TPS latency-ms" of pgbench.
pgbench_on() {
    local dev=$1 mnt=$2 sock port out
    mkfs.ext4 -q -F "$dev"
    mkdir -p "$mnt"
    fuse2fs "$dev" "$mnt" -o allow_other
    MOUNTS+=("$mnt")
    wait_for "mountpoint -q $mnt"
    mkdir "$mnt/pg" && chown postgres: "$mnt/pg"
    sock=$(mktemp -d "$DIR/sock.XXXXXX") && chown postgres: "$sock"
    port=$(free_port)
    runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres -D "$mnt/pg/data" >/dev/null
    PGDATA_RUNNING="$mnt/pg/data"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$mnt/pg/data" -w -l "$sock/postgres.log" \
        -o "-p $port -k $sock -c listen_addresses=''" start >/dev/null
    runuser -u postgres -- "$PG_BIN/pgbench" -q -i -s "$SCALE" -h "$sock" -p "$port" postgres >/dev/null 2>&1
    out=$(runuser -u postgres -- "$PG_BIN/pgbench" -c "$CLIENTS" -j 2 -T "$RUNTIME" -h "$sock" -p "$port" postgres 2>&1)
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$mnt/pg/data" -m fast -w stop >/dev/null
    PGDATA_RUNNING=""
    umount "$mnt"
    unset 'MOUNTS[${#MOUNTS[@]}-1]'
    RESULT="$(awk '/^tps/{print $3}' <<<"$out" | head -1) $(awk '/latency average/{print $4}' <<<"$out")"
}

# --- Meridian volume -------------------------------------------------------------------------
S3_PORT=$(free_port)
"$BIN" server --data "$DIR/s3" --listen 127.0.0.1:"$S3_PORT" >"$DIR/server.log" 2>&1 &
PIDS+=($!)
wait_port "$S3_PORT"
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
"$BIN" volume create pg --size "$DISK_SIZE" --create-bucket >/dev/null
NBD_PORT=$(free_port)
"$BIN" volume serve pg --listen 127.0.0.1:"$NBD_PORT" >"$DIR/serve.log" 2>&1 &
PIDS+=($!)
wait_port "$NBD_PORT"
mkdir -p "$DIR/nbd"
nbdfuse "$DIR/nbd/disk" "nbd://127.0.0.1:$NBD_PORT/pg" &
PIDS+=($!)
MOUNTS+=("$DIR/nbd")
wait_for "[ -s $DIR/nbd/disk ]"
pgbench_on "$DIR/nbd/disk" "$DIR/mnt-volume"
MERIDIAN=$RESULT

# --- local image file ------------------------------------------------------------------------
truncate -s "$DISK_SIZE" "$DIR/local.img"
pgbench_on "$DIR/local.img" "$DIR/mnt-local"
LOCAL=$RESULT
rm -f "$DIR/local.img"

echo
echo "pgbench -c $CLIENTS -j 2 -T $RUNTIME, scale $SCALE, ext4 via fuse2fs on a $DISK_SIZE disk"
printf "%-28s %10s %14s\n" "disk" "TPS" "latency ms"
printf "%-28s %10s %14s\n" "Meridian volume (nbdfuse)" $MERIDIAN
printf "%-28s %10s %14s\n" "local image file" $LOCAL
