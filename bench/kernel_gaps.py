#!/usr/bin/env python3
"""Where a repeated step's GPU time goes between its kernels, from bench/kernel_timeline.cpp's CSV.

The records are split into periods at each kernel whose name contains MARKER (one per rep of the step);
for the last REPS periods it prints each record's start, the idle gap before it, its duration and its
name, then the period's span, busy time and idle total.

    kernel_gaps.py TIMELINE.csv MARKER [REPS]
"""
import csv
import re
import sys


def short(name):
    # CUPTI reports mangled names: keep the kernel's own identifier (letters and underscores ending in
    # "_kernel", which skips the mangling's length digits and hashes) or cuBLAS's nvjet name.
    m = re.search(r"(nvjet\w+|[a-z][a-z_]*_kernel)", name)
    return m.group(1) if m else name[:60]


def main():
    path, marker = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    rows = sorted(((r[0], int(r[1]), int(r[2]), r[4]) for r in csv.reader(open(path))), key=lambda r: r[1])
    marks = [i for i, r in enumerate(rows) if r[0] == "K" and marker in r[3]]
    if len(marks) < 2:
        sys.exit(f"kernel_gaps: fewer than two kernels named like '{marker}' in {path}")
    marks = marks[-(reps + 1):]
    for a, b in zip(marks, marks[1:]):
        period, t0, prev = rows[a:b], rows[a][1], None
        print("\n| start us | idle before | us | record |\n|---|---|---|---|")
        for kind, start, end, name in period:
            gap = max(0, start - prev) / 1e3 if prev is not None else 0.0
            label = short(name) if kind == "K" else name
            print(f"| {(start - t0) / 1e3:.1f} | {gap:.1f} | {(end - start) / 1e3:.1f} | {label} |")
            prev = end if prev is None else max(prev, end)
        span = rows[b][1] - t0
        busy, covered = 0, t0  # the union of the records' intervals: records on other streams may overlap
        for _, start, end, _ in period:
            busy += max(0, end - max(start, covered))
            covered = max(covered, end)
        print(f"\nperiod: {span / 1e3:.1f} us, busy {busy / 1e3:.1f} us, idle {(span - busy) / 1e3:.1f} us, "
              f"{len(period)} records")


if __name__ == "__main__":
    main()
