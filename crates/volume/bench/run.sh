#!/usr/bin/env bash
# Volume benchmark: fio's nbd engine against `meridian volume serve` backed by a local
# `meridian server`, next to the same jobs on a plain local file exported by `qemu-nbd`; then the
# RSS of `serve` after a full 4 KiB random fill of a large volume.
#
#   crates/volume/bench/run.sh [--quick]
#
# Env: MERIDIAN_BIN (default target/release/meridian; build with `cargo build --release -p
# meridian`), BENCH_DIR (scratch, kept; default a temp dir removed at exit), RUNTIME (seconds per timed job, 30),
# JOB_SIZE (bytes per job / volume size for the throughput jobs, 4G), FILL_SIZE (16G; the RSS
# fill; 0 skips it), SKIP_JOBS=1 (only the fill), COLD_ONLY=1 (of the jobs, only the cold read
# after the prefill, on both sides: the quick check of cold reads), SERVE_ARGS (extra flags of
# the benchmarked `volume serve`, e.g. "--read-ahead 0"). Compare the fill's RSS at two sizes for the
# per-GiB cost. --quick: RUNTIME=10, JOB_SIZE=1G, FILL_SIZE=2G.
# Needs: fio, qemu-utils (qemu-nbd), libnbd-bin. Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/../../.."

RUNTIME=${RUNTIME:-30}
JOB_SIZE=${JOB_SIZE:-4G}
FILL_SIZE=${FILL_SIZE:-16G}
if [ "${1:-}" = "--quick" ]; then RUNTIME=10 JOB_SIZE=1G FILL_SIZE=2G; fi
BIN=${MERIDIAN_BIN:-${CARGO_TARGET_DIR:-target}/release/meridian}
for t in fio qemu-nbd nbdinfo; do
    command -v $t >/dev/null || { echo "missing $t: apt-get install -y fio qemu-utils libnbd-bin" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p meridian" >&2; exit 1; }

# A scratch directory we made is removed at exit (a 16 GiB fill leaves ~17 GiB in it).
OWN_DIR=""
if [ -z "${BENCH_DIR:-}" ]; then OWN_DIR=$(mktemp -d /tmp/meridian-volume-bench.XXXXXX); fi
DIR=${BENCH_DIR:-$OWN_DIR}
mkdir -p "$DIR"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$OWN_DIR" ]; then rm -rf "$OWN_DIR"; fi
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecretbenchsecret
export MERIDIAN_VOLUME_BUCKET=bench MERIDIAN_VOLUME_CACHE="$DIR/cache" RUST_LOG=warn

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

S3_PORT=$(free_port)
"$BIN" server --data "$DIR/s3" --listen 127.0.0.1:"$S3_PORT" >"$DIR/server.log" 2>&1 &
PIDS+=($!)
wait_port "$S3_PORT"
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT

# NBD FLUSH through qemu-io; prints the seconds it took. Both servers then hold nothing unwritten:
# qemu-nbd has fsynced its file, Meridian has uploaded its journal.
flush_secs() {
    local t0
    t0=$(date +%s.%N)
    qemu-io -f raw -c flush "$1" >/dev/null
    python3 -c "import time; print('%.1f' % (time.time() - $t0))"
}

# fio job: name rw bs iodepth size uri -> "IOPS MiB/s MiB"
run_fio() {
    local out
    out=$(fio --name="$1" --ioengine=nbd --uri="$6" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$5" --time_based --runtime="$RUNTIME" --ramp_time=2 --group_reporting \
        --output-format=json 2>/dev/null)
    python3 -c '
import json,sys
raw=sys.stdin.read()
j=json.loads(raw[raw.index("{"):])["jobs"][0]  # fio nbd prints a line before the JSON
side=j["write"] if j["write"]["io_bytes"]>0 else j["read"]
print("%.0f %.1f %.0f" % (side["iops"], side["bw"]/1024, side["io_bytes"]/2**20))' <<<"$out"
}

# One job, then a FLUSH: "name IOPS MiB/s flush-seconds sustained-MiB/s", where sustained counts
# the flush time (what reached the disk or the bucket per second).
job() { # name rw bs iodepth uri
    local r f
    r=$(run_fio "$1" "$2" "$3" "$4" "$JOB_SIZE" "$5")
    f=$(flush_secs "$5")
    set -- "$1" $r "$f"
    echo "$1 $2 $3 $5 $(python3 -c "print('%.1f' % ($4 / ($RUNTIME + $5)))")"
}

jobs() { # uri
    job randwrite-4k-qd32 randwrite 4k 32 "$1"
    job write-1m-qd8 write 1M 8 "$1"
    job read-1m-qd8 read 1M 8 "$1"
}

# The kernel's page cache is dropped before a cold read when we may (root); otherwise the
# servers' files stay cached and "cold" only means a restarted server.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "note: cannot drop the page cache" >&2; }

start_serve() {
    NBD_PORT=$(free_port)
    # shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
    "$BIN" volume serve bench --listen 127.0.0.1:"$NBD_PORT" --gc-interval 0 ${SERVE_ARGS:-} >>"$DIR/serve.log" 2>&1 &
    SERVE=$!; PIDS+=($SERVE)
    wait_port "$NBD_PORT"
}

start_qemu() {
    Q_PORT=$(free_port)
    qemu-nbd -f raw -x plain -b 127.0.0.1 -p "$Q_PORT" -t "$DIR/plain.img" >"$DIR/qemu-nbd.log" 2>&1 &
    QPID=$!; PIDS+=($QPID)
    wait_port "$Q_PORT"
}

# --- Meridian volume -------------------------------------------------------------------------
if [ -z "${SKIP_JOBS:-}" ]; then
"$BIN" volume create bench --size "$JOB_SIZE" --create-bucket >/dev/null
start_serve
# The read job reads what the write jobs wrote: fill first so reads hit real data.
fio --name=prefill --ioengine=nbd --uri=nbd://127.0.0.1:$NBD_PORT/bench --rw=write --bs=1M \
    --iodepth=8 --size="$JOB_SIZE" >/dev/null 2>&1
flush_secs nbd://127.0.0.1:$NBD_PORT/bench >/dev/null
MERIDIAN=""
if [ -z "${COLD_ONLY:-}" ]; then MERIDIAN=$(jobs nbd://127.0.0.1:$NBD_PORT/bench)$'\n'; fi
kill -TERM $SERVE; wait $SERVE || true
# Cold: a new serve has an empty local cache, so every read is a GET on the bucket.
drop_caches
start_serve
MERIDIAN+=$(job read-1m-qd8-cold read 1M 8 nbd://127.0.0.1:$NBD_PORT/bench)
# What the cold job cost `serve`: CPU seconds and minor page faults (fields 14+15 and 10 of stat).
COLD_SERVE_COST=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f s CPU, %d minor faults", ($14+$15)/hz, $10}' /proc/$SERVE/stat)
kill -TERM $SERVE; wait $SERVE || true

# --- qemu-nbd on a plain local file ----------------------------------------------------------
truncate -s "$JOB_SIZE" "$DIR/plain.img"
start_qemu
fio --name=prefill --ioengine=nbd --uri=nbd://127.0.0.1:$Q_PORT/plain --rw=write --bs=1M \
    --iodepth=8 --size="$JOB_SIZE" >/dev/null 2>&1
flush_secs nbd://127.0.0.1:$Q_PORT/plain >/dev/null
BASELINE=""
if [ -z "${COLD_ONLY:-}" ]; then BASELINE=$(jobs nbd://127.0.0.1:$Q_PORT/plain)$'\n'; fi
kill $QPID; wait $QPID 2>/dev/null || true
drop_caches
start_qemu
BASELINE+=$(job read-1m-qd8-cold read 1M 8 nbd://127.0.0.1:$Q_PORT/plain)
kill $QPID; wait $QPID 2>/dev/null || true
rm -f "$DIR/plain.img"

echo
echo "Each job is followed by an NBD FLUSH; 'sustained' = MiB written / (runtime + flush time)."
echo "job                 meridian IOPS  MiB/s flush(s) sustained   qemu-nbd IOPS  MiB/s flush(s) sustained   ratio"
paste -d' ' <(echo "$MERIDIAN") <(echo "$BASELINE") | while read -r name mi mb mf ms _ qi qb qf qs; do
    printf "%-20s %12s %6s %8s %9s %14s %6s %8s %9s   %5.0f%%\n" "$name" "$mi" "$mb" "$mf" "$ms" \
        "$qi" "$qb" "$qf" "$qs" "$(python3 -c "print(100*$mi/$qi)")"
done
echo "cold read job, serve's cost: $COLD_SERVE_COST"
fi

# --- RSS after a full random fill ------------------------------------------------------------
if [ "$FILL_SIZE" != "0" ]; then
    "$BIN" volume create fill --size "$FILL_SIZE" --create-bucket >/dev/null
    F_PORT=$(free_port)
    "$BIN" volume serve fill --listen 127.0.0.1:"$F_PORT" --gc-interval 0 >"$DIR/fill.log" 2>&1 &
    FPID=$!; PIDS+=($FPID)
    wait_port "$F_PORT"
    start=$(date +%s)
    # fio's random map makes a randwrite job of --size cover every 4 KiB block exactly once.
    fio --name=fill --ioengine=nbd --uri=nbd://127.0.0.1:$F_PORT/fill --rw=randwrite --bs=4k \
        --iodepth=32 --size="$FILL_SIZE" >/dev/null 2>&1
    secs=$(( $(date +%s) - start ))
    rss=$(awk '/VmRSS/{print $2}' /proc/$FPID/status)
    hwm=$(awk '/VmHWM/{print $2}' /proc/$FPID/status)
    gib=$(python3 -c "import re;s='$FILL_SIZE';m=re.match(r'(\d+)([GMT]?)',s);n=int(m[1]);print(n*{'':1/2**30,'M':1/1024,'G':1,'T':1024}[m[2]])")
    echo
    echo "random 4k fill of $FILL_SIZE ($gib GiB): ${secs}s; serve RSS ${rss} KiB (peak ${hwm} KiB)"
    kill -TERM $FPID; wait $FPID || true
fi
