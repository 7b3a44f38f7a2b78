#!/usr/bin/env python3
"""What one fdatasync costs on this disk for the writes a metadata commit makes (decision 067).

    python3 bench/fsync-cost.py [DIR]   # DIR: on the disk under test (default: the current one)
"""
import os
import random
import sys
import time

N = 2000
RECORD = b"x" * 300
PAGE = b"y" * 4096


def bench(path, setup, write):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        setup(fd)
        os.fsync(fd)
        start = time.perf_counter()
        for i in range(N):
            write(fd, i)
            os.fdatasync(fd)
        return (time.perf_counter() - start) / N * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    path = os.path.join(directory, "fsync-cost.tmp")
    cases = [
        ("300 bytes appended to a growing file", lambda fd: None, lambda fd, i: os.pwrite(fd, RECORD, i * 300)),
        ("300 bytes written over a preallocated file",
         lambda fd: os.pwrite(fd, b"\0" * (N * 300 + 4096), 0), lambda fd, i: os.pwrite(fd, RECORD, i * 300)),
        ("13 random 4 KiB pages in a 64 MiB file", lambda fd: os.pwrite(fd, b"\0" * (64 << 20), 0),
         lambda fd, i: [os.pwrite(fd, PAGE, random.randrange(16384) * 4096) for _ in range(13)]),
        ("13 4 KiB pages appended to a growing file", lambda fd: None,
         lambda fd, i: [os.pwrite(fd, PAGE, (i * 13 + j) * 4096) for j in range(13)]),
    ]
    for name, setup, write in cases:
        print(f"{name}: {bench(path, setup, write):.0f} µs per fdatasync round")


if __name__ == "__main__":
    main()
