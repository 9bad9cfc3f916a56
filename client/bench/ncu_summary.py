#!/usr/bin/env python3
"""Sums an ncu CSV log by kernel name: where a step's GPU time goes.

Usage: ncu_summary.py LOG.csv [STEPS]

LOG.csv from `ncu --csv --metrics gpu__time_duration.sum[,dram__bytes_read.sum,
dram__bytes_write.sum] ...` (README: `gqa-bench decode --cuda_profiler_step` profiles one served
step). With the DRAM metrics, each kernel's bytes and the bandwidth it reached are printed beside
its time. STEPS (default 1) divides calls and times: per step."""
import collections
import re
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
# Nsight Compute spells units "nsecond"/"Mbyte" in older releases and "ns"/"MB" in newer ones.
time_scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6,
              "ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
byte_scale = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3,
              "B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


def scale(table, unit):
    if unit not in table:
        sys.exit(f"ncu_summary.py: unknown metric unit '{unit}' in {sys.argv[1]}")
    return table[unit]


def short_name(kernel):
    """'void ns::<unnamed>::Foo<T, 3, Epilogue<T>>(Args)' -> 'Foo/Epilogue': the kernel's name,
    and the last name in its template arguments that takes template arguments itself (the
    skinny products' epilogue, which tells them apart; for Foo<A<B<int>>> it is B)."""
    for anonymous in ("(anonymous namespace)", "<unnamed>"):
        kernel = kernel.replace(anonymous, "anon")
    signature = kernel.split("(")[0]
    name = signature.split("<")[0].split("::")[-1].split()[-1]
    inner = re.findall(r"(\w+)<", signature)[1:]
    return f"{name}/{inner[-1]}" if inner else name


# One kernel launch per ID: its name and grid, microseconds and megabytes moved.
launches = collections.defaultdict(lambda: {"name": "", "us": 0.0, "mb": 0.0})
for r in rows[1:]:
    launch = launches[r[at["ID"]]]
    # The function's name without namespaces and template arguments, and its grid (which tells
    # the products of one kernel template apart).
    name = short_name(r[at["Kernel Name"]])
    launch["name"] = f"{name} grid {r[at['Grid Size']]}"
    value = float(r[at["Metric Value"]].replace(",", ""))
    unit = r[at["Metric Unit"]]
    if r[at["Metric Name"]] == "gpu__time_duration.sum":
        launch["us"] += value * scale(time_scale, unit)
    elif r[at["Metric Name"]].startswith("dram__bytes"):
        launch["mb"] += value * scale(byte_scale, unit)
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

# The first launches in order (one layer and more): tells apart the products that share a grid.
print("\nfirst launches in order:")
for launch_id in sorted(launches, key=int)[:24]:
    launch = launches[launch_id]
    rate = launch["mb"] / launch["us"] * 1e3 if launch["us"] > 0 else 0.0
    print(f"  {launch['us']:8.1f} us {launch['mb']:8.2f} MB {rate:6.0f} GB/s  {launch['name']}")
