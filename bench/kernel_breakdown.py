#!/usr/bin/env python3
"""Per-kernel time table from a profiler's CSV, divided by the number of profiled reps.

Reads either `ncu --csv --metrics gpu__time_duration.sum` output (one row per launch) or
`nsys stats -r cuda_gpu_kern_sum -f csv` output (one row per kernel name), and prints a markdown table of
kernel (shortened name), launches per rep, microseconds per rep and share of the kernel total.

    kernel_breakdown.py FILE.csv REPS [TITLE]
"""
import csv
import re
import sys


def short(name):
    # Keep the kernel's own name and its template arguments (they tell the sm90 modes and the cuBLAS tiles
    # apart); drop the return type, the namespaces and the parameter list.
    name = name.replace("(anonymous namespace)::", "").replace("void ", "")
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list is the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    head, _, tail = name.partition("<")
    head = head.split("::")[-1]
    return (head + ("<" + tail if tail else ""))[:110]


def rows_of(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    reader = csv.DictReader(lines)
    for r in reader:
        if "Metric Value" in r and "Kernel Name" in r:  # ncu: one launch per row, ns or us units
            if r.get("Metric Name") != "gpu__time_duration.sum":
                continue
            v = float(r["Metric Value"].replace(",", ""))
            unit = r.get("Metric Unit", "ns")
            ns = v * {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(unit, 1)
            yield r["Kernel Name"], 1, ns
        elif "Total Time (ns)" in r and "Name" in r:  # nsys cuda_gpu_kern_sum
            yield r["Name"], int(r["Instances"].replace(",", "")), float(r["Total Time (ns)"].replace(",", ""))


def main():
    path, reps = sys.argv[1], int(sys.argv[2])
    title = sys.argv[3] if len(sys.argv) > 3 else path
    total = {}
    for name, n, ns in rows_of(path):
        k = short(name)
        c, t = total.get(k, (0, 0.0))
        total[k] = (c + n, t + ns)
    if not total:
        sys.exit(f"kernel_breakdown: no kernel rows in {path}")
    all_ns = sum(t for _, t in total.values())
    print(f"\n{title}: {all_ns / reps / 1e3:.1f} us of kernels per rep\n")
    print("| kernel | launches/rep | us/rep | share |\n|---|---|---|---|")
    for k, (c, t) in sorted(total.items(), key=lambda kv: -kv[1][1]):
        print(f"| {k} | {c / reps:g} | {t / reps / 1e3:.1f} | {100 * t / all_ns:.1f}% |")


if __name__ == "__main__":
    main()
