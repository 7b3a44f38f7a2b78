#!/usr/bin/env python3
"""Turns the JSON reports of bench/run-all.sh into one markdown table per
workload, plus Meridian as a fraction of the ceilings and of each peer.

    python3 bench/summarize.py bench/results/DATE
"""

import json
import pathlib
import sys

ORDER = ["meridian", "garage", "garage-nofsync", "s3s-fs", "files", "null-http"]


def main_op(report):
    """The operation a workload is about (mixed: the total)."""
    wl = report["workload"]
    if wl == "mixed":
        return None
    for op in report["ops"]:
        if op["op"] == wl:
            return op
    return None


def row(label, r):
    op = main_op(r)
    t = r["total"]
    lat = op["latency_ms"] if op else None
    server = r.get("server") or {}
    rss = f'{server["max_rss_kib"] / 1024:.0f}' if server.get("max_rss_kib") else "-"
    cpu = r.get("client_cpu_secs")
    cpu_op = f"{cpu * 1e6 / t['ops']:.0f}" if cpu and t["ops"] else "-"
    errors = t["errors"]
    if lat:
        l = f'{lat["p50"]:.2f} / {lat["p90"]:.2f} / {lat["p99"]:.2f} / {lat["p999"]:.2f} / {lat["max"]:.1f}'
    else:
        l = "see per-op JSON"
    return (
        f'| {label} | {t["ops_per_sec"]:,.0f} | {t["mib_per_sec"]:,.1f} | {l} | {errors} | {rss} | {cpu_op} |'
    )


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    runs = {}
    for f in sorted(out.glob("*--*.json")):
        label, workload = f.stem.split("--", 1)
        try:
            runs.setdefault(workload, {})[label] = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
    if not runs:
        print("no reports found in", out)
        return 1
    for workload in sorted(runs):
        by = runs[workload]
        any_r = next(iter(by.values()))
        print(f"### {workload}: {any_r['size']}, concurrency {any_r['concurrency']}")
        print()
        print("| target | ops/s | MiB/s | latency ms p50 / p90 / p99 / p99.9 / max | errors | server max RSS MiB | client CPU µs/op |")
        print("|---|---:|---:|---|---:|---:|---:|")
        labels = sorted(by, key=lambda l: (ORDER.index(l) if l in ORDER else len(ORDER), l))
        for label in labels:
            print(row(label, by[label]))
        if "meridian" in by:
            m = by["meridian"]["total"]
            for other in labels:
                if other == "meridian":
                    continue
                o = by[other]["total"]
                key = "mib_per_sec" if ("64m" in workload or "256m" in workload) else "ops_per_sec"
                if o[key]:
                    print(f"\nMeridian / {other}: {m[key] / o[key]:.2f} ({key.replace('_', ' ')})", end="")
            print()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
