#!/usr/bin/env python3
"""How busy the machine's CPUs are, every 50 ms, for SECONDS: one line per sample with the time
and the percentage of all cores busy (from /proc/stat). Run it beside a benchmark to see which
phases saturate the cores.

    python3 bench/cpu-busy.py 25 > cpu.txt & cargo bench ...; wait
"""
import sys
import time


def totals():
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


def main():
    end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 10)
    idle, total = totals()
    while time.time() < end:
        time.sleep(0.05)
        now_idle, now_total = totals()
        spent = now_total - total
        busy = 100 * (1 - (now_idle - idle) / spent) if spent else 0
        print(f"{time.time():.2f} {busy:3.0f}")
        idle, total = now_idle, now_total


if __name__ == "__main__":
    main()
