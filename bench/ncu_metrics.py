#!/usr/bin/env python3
"""Pivot `ncu --csv --metrics a,b,...` output into a markdown table: one row per launch, one column per metric.

    ncu_metrics.py FILE.csv
"""
import csv
import sys

from kernel_breakdown import short


def main(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    launches, metrics = {}, []
    for r in csv.DictReader(lines):
        key = (int(r["ID"]), short(r["Kernel Name"]))
        name = r["Metric Name"] + (f" ({r['Metric Unit']})" if r.get("Metric Unit") else "")
        if name not in metrics:
            metrics.append(name)
        launches.setdefault(key, {})[name] = r["Metric Value"]
    print("| launch | kernel | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 2) + "|")
    for (i, k), vals in sorted(launches.items()):
        print(f"| {i} | {k} | " + " | ".join(vals.get(m, "") for m in metrics) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
