#!/usr/bin/env python3
"""Sums an ncu CSV log by kernel name: where a step's GPU time goes.

Usage: ncu_summary.py LOG.csv [STEPS]

LOG.csv from `ncu --csv --metrics gpu__time_duration.sum[,dram__bytes_read.sum,
dram__bytes_write.sum] ...` (README: `gqa-bench decode --cuda_profiler_step` profiles one served
step). With the DRAM metrics, each kernel's bytes and the bandwidth it reached are printed beside
its time. STEPS (default 1) divides calls and times: per step."""
import collections
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
if len(rows) < 2:
    sys.exit(f"ncu_summary.py: no ncu metric rows in {sys.argv[1]} (did the profiler collect "
             "any kernel? with --profile-from-start off, the program must call cudaProfilerStart)")
header = rows[0]
at = {name: header.index(name) for name in ("ID", "Kernel Name", "Grid Size", "Metric Name",
                                            "Metric Unit", "Metric Value")}
time_scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
byte_scale = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}
# One kernel launch per ID: its name and grid, microseconds and megabytes moved.
launches = collections.defaultdict(lambda: {"name": "", "us": 0.0, "mb": 0.0})
for r in rows[1:]:
    launch = launches[r[at["ID"]]]
    # The function's name without namespaces and template arguments, and its grid (which tells
    # the products of one kernel template apart).
    name = r[at["Kernel Name"]].split("<")[0].split("(")[0].split("::")[-1]
    launch["name"] = f"{name} grid {r[at['Grid Size']]}"
    value = float(r[at["Metric Value"]].replace(",", ""))
    unit = r[at["Metric Unit"]]
    if r[at["Metric Name"]] == "gpu__time_duration.sum":
        launch["us"] += value * time_scale.get(unit, 1.0)
    elif r[at["Metric Name"]].startswith("dram__bytes"):
        launch["mb"] += value * byte_scale.get(unit, 1.0)
total = collections.defaultdict(lambda: [0, 0.0, 0.0])
for launch in launches.values():
    t = total[launch["name"]]
    t[0] += 1
    t[1] += launch["us"]
    t[2] += launch["mb"]
grand = sum(t[1] for t in total.values()) / steps
grand_mb = sum(t[2] for t in total.values()) / steps
print(f"{'calls':>6} {'us':>9} {'share':>6} {'MB':>9} {'GB/s':>7}  kernel   "
      f"(per step: {grand:.1f} us, {grand_mb:.1f} MB of DRAM traffic)")
for name, (calls, us, mb) in sorted(total.items(), key=lambda x: -x[1][1]):
    rate = mb / us * 1e3 if us > 0 else 0.0
    print(f"{calls / steps:6.1f} {us / steps:9.1f} {100 * us / steps / grand:5.1f}% "
          f"{mb / steps:9.2f} {rate:7.0f}  {name}")
