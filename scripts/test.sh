#!/usr/bin/env bash
# Runs every Meridian test, the same way CI does (.ci/run calls this).
#
# The tests talk to real tools (the AWS CLI, boto3, rclone, etcd, qemu-img, libnbd). This script
# installs whatever is missing: Debian packages with apt-get (as root, or through sudo) and
# Python packages with pip. If something cannot be installed it stops with a message saying what
# to install; the tests themselves also fail loudly when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

install_debian_packages() {
    local missing=()
    command -v rclone >/dev/null || missing+=(rclone)
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v etcdctl >/dev/null || missing+=(etcd-client)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v nbdinfo >/dev/null || missing+=(libnbd-bin)
    command -v fio >/dev/null || missing+=(fio)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v fuse2fs >/dev/null || missing+=(fuse2fs)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v ffmpeg >/dev/null || missing+=(ffmpeg)
    command -v faketime >/dev/null || missing+=(faketime)
    command -v s3fs >/dev/null || missing+=(s3fs)
    command -v restic >/dev/null || missing+=(restic)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then sudo=(sudo); else
            echo "ERROR: these packages are needed by the tests: ${missing[*]}" >&2
            echo "       install them (apt-get install ${missing[*]}) or run this script as root" >&2
            exit 1
        fi
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_packages() {
    local missing=()
    python3 -c 'import boto3' 2>/dev/null || missing+=(boto3)
    command -v aws >/dev/null || missing+=(awscli)
    # moto's S3 server: the volume test against an S3 service Meridian did not write.
    { command -v moto_server >/dev/null && python3 -c 'import moto.server, flask' 2>/dev/null; } ||
        missing+=('moto[server]')
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Python packages: ${missing[*]}"
    python3 -m pip install --quiet "${missing[@]}"
    hash -r
}

install_nextest() {
    cargo nextest --version >/dev/null 2>&1 && return 0
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked --quiet
}

install_debian_packages
install_python_packages
install_nextest

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo nextest run"
cargo nextest run --workspace --profile ci "$@"
# The S3 suite once more, against a node of a three-region cluster on etcd.
log "cargo nextest run (S3 suite on a clustered node)"
MERIDIAN_TEST_CLUSTER=1 cargo nextest run --profile ci -p meridian --test s3_api --test s3_errors --test access --test s3_notifications --test clients --test snapshots "$@"
