#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name: where a step's GPU
time goes. Usage: ncu_summary.py LOG.csv"""
import collections
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
header = rows[0]
name_at, unit_at, value_at = (header.index("Kernel Name"), header.index("Metric Unit"),
                              header.index("Metric Value"))
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
total = collections.defaultdict(lambda: [0, 0.0])
for r in rows[1:]:
    name = r[name_at].split("(")[0][:70]
    total[name][0] += 1
    total[name][1] += float(r[value_at].replace(",", "")) * scale.get(r[unit_at], 1.0)
grand = sum(t for _, t in total.values())
print(f"{'calls':>5} {'us':>9} {'share':>6}  kernel   (all: {grand:.1f} us)")
for name, (calls, us) in sorted(total.items(), key=lambda x: -x[1][1]):
    print(f"{calls:5d} {us:9.1f} {100 * us / grand:5.1f}%  {name}")
