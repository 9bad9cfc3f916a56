#!/usr/bin/env python3
"""client/bench/prefix_bench.py on the CPU with the tiny shape and tiny sizes: every workload runs
with caching on and off, the on runs hit the cache where prompts share a prefix (and never where
they do not), the off runs never query it, and results.md has a row for each."""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "bench"))
import prefix_bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--loadgen", required=True)
    a = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="gqa-prefix-bench-") as out:
        prefix_bench.main(["--server_bin", a.server, "--loadgen_bin", a.loadgen, "--small",
                           "--shapes", "tiny", "--system_len", "64", "--user_len", "8",
                           "--output_len", "4", "--concurrency", "2", "--num_requests", "4",
                           "--c1_requests", "2", "--turns", "2", "--kv_cache_memory", "64MiB",
                           "--out", out])
        with open(os.path.join(out, "results.json")) as f:
            rows = json.load(f)["rows"]
        md = open(os.path.join(out, "results.md")).read()
    seen = {(r["workload"], r["caching"]) for r in rows}
    for workload in ("shared", "shared-c1", "turn-c1", "multiturn", "unique"):
        for caching in (True, False):
            if (workload, caching) not in seen:
                failures.append(f"no row for {workload} caching={caching}")
    for r in rows:
        label = f"{r['workload']} caching={r['caching']}"
        if r["ttft_mean_s"] is None or r["output_throughput"] is None:
            failures.append(f"{label}: no TTFT or throughput")
        if not r["caching"] and r["hit_rate"] is not None:
            failures.append(f"{label}: hit rate {r['hit_rate']} without caching")
        unshared = r["workload"] in ("unique", "turn-c1")
        if r["caching"] and not unshared and not (r["hit_rate"] or 0) > 0.5:
            failures.append(f"{label}: hit rate {r['hit_rate']}, expected most tokens cached")
        if r["caching"] and unshared and r["hit_rate"] != 0:
            failures.append(f"{label}: hit rate {r['hit_rate']} on unique prompts")
    if md.count("| tiny |") != 10:
        failures.append("results.md lacks rows:\n" + md)
    for f in failures:
        print("FAIL " + f)
    print(f"{len(rows)} rows: " + ("all checks passed" if not failures else "FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
