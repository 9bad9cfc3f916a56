#!/usr/bin/env python3
"""client/bench/ncu_summary.py on a hand-made ncu CSV (the columns and units ncu --csv writes, in
the older spelling "usecond"/"Mbyte" and the newer "ns"/"MB"): launches summed per kernel (named
by function and epilogue, "(anonymous namespace)" and "<unnamed>" alike) and grid, times and DRAM
bytes in every unit converted, per step, the bandwidth each kernel reached, and the first
launches in order. Exits non-zero on any mismatch."""
import csv
import io
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(HERE, "..", "..", "client", "bench", "ncu_summary.py")
HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
          "Block Size", "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit",
          "Metric Value"]


def launch(launch_id, name, grid, time, bytes_read, bytes_written):
    base = [str(launch_id), "1", "gqa-bench", "h", name, "1", "7", "(128, 1, 1)", grid, "0", "9.0",
            "Command line profiler metrics"]
    return [base + ["gpu__time_duration.sum", time[1], time[0]],
            base + ["dram__bytes_read.sum", bytes_read[1], bytes_read[0]],
            base + ["dram__bytes_write.sum", bytes_written[1], bytes_written[0]]]


def main():
    skinny = ("void gqa::kernels::cuda::skinny::SkinnyKernel<__nv_bfloat16, 1, "
              "gqa::kernels::cuda::(anonymous namespace)::StoreY<__nv_bfloat16, float>>(...)")
    rows = [HEADER]
    # Two steps: the skinny product on grid 384 twice each (2 us + 3 us a step, 12 MB + 8 MB),
    # the decode kernel on another grid once each (4000 ns, 1 MB read + 1000 KB written).
    rows += launch(1, skinny, "(384, 1, 1)", ("2", "usecond"), ("12", "Mbyte"), ("0", "byte"))
    rows += launch(2, skinny, "(384, 1, 1)", ("3", "usecond"), ("8", "Mbyte"), ("0", "byte"))
    rows += launch(3, "void gqa::kernels::cuda::DecodeKernel<float>(Args)", "(4, 8, 1)",
                   ("4,000", "ns"), ("1", "MB"), ("1000", "KB"))
    rows += launch(4, skinny, "(384, 1, 1)", ("2", "usecond"), ("12", "Mbyte"), ("0", "byte"))
    rows += launch(5, skinny, "(384, 1, 1)", ("3", "usecond"), ("8", "Mbyte"), ("0", "byte"))
    rows += launch(6, "void gqa::kernels::cuda::DecodeKernel<float>(Args)", "(4, 8, 1)",
                   ("4", "usecond"), ("1000000", "byte"), ("1", "Mbyte"))
    text = io.StringIO()
    text.write("==PROF== lines before the table are skipped\n")
    csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(text.getvalue())
    out = subprocess.run([sys.executable, SUMMARY, f.name, "2"], capture_output=True, text=True,
                         check=True).stdout
    os.unlink(f.name)
    table, _, launches = out.partition("\n\nfirst launches in order:\n")
    lines = table.splitlines()
    failures = []
    if "per step: 9.0 us, 22.0 MB" not in lines[0]:
        failures.append(f"totals per step: {lines[0]}")
    # calls, us, share, MB, GB/s, kernel: most time first.
    want = [["2.0", "5.0", "55.6%", "20.00", "4000", "SkinnyKernel/StoreY", "grid", "(384, 1, 1)"],
            ["1.0", "4.0", "44.4%", "2.00", "500", "DecodeKernel", "grid", "(4, 8, 1)"]]
    for got, expected in zip(lines[1:], want):
        fields = got.split(None, 7)
        fields = fields[:7] + [" ".join(fields[7:])]
        if fields != expected:
            failures.append(f"row {got!r}, expected {expected}")
    if len(lines) != 3:
        failures.append(f"{len(lines) - 1} kernel rows, expected 2:\n{out}")
    # Every launch (6 here, at most 24), in launch order: us, MB, GB/s, kernel.
    order = [line.split("GB/s")[1].strip() for line in launches.splitlines() if line.strip()]
    one_step = ["SkinnyKernel/StoreY grid (384, 1, 1)"] * 2 + ["DecodeKernel grid (4, 8, 1)"]
    if order != one_step * 2:
        failures.append(f"launch order: {order}")
    if launches.splitlines()[0].split()[:4] != ["2.0", "us", "12.00", "MB"]:
        failures.append(f"first launch: {launches.splitlines()[0]!r}")
    # A kernel in "<unnamed>" namespaces (newer ncu) is named the same way.
    unnamed = [HEADER] + launch(1, "void kernels::<unnamed>::SampleKernel<true>(const float *)",
                                "(1, 1, 1)", ("17", "us"), ("0.5", "MB"), ("0", "B"))
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL).writerows(unnamed)
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(text.getvalue())
    out = subprocess.run([sys.executable, SUMMARY, f.name], capture_output=True, text=True,
                         check=True).stdout
    os.unlink(f.name)
    if out.splitlines()[1].split()[1:4] != ["17.0", "100.0%", "0.50"] or \
            "SampleKernel grid (1, 1, 1)" not in out.splitlines()[1]:
        failures.append(f"<unnamed> kernel in us and MB: {out.splitlines()[1]!r}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("ncu_summary: per-kernel table as expected")


if __name__ == "__main__":
    main()
