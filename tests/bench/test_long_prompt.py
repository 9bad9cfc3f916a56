#!/usr/bin/env python3
"""client/bench/long_prompt.py on the CPU with the tiny shape: a 600-token prompt served in
chunks of 64 and of 256 through the real gqa-server and gqa-loadgen; every measured request
completes, each chunk size gets its row with a positive TTFT, and the pool holds the prompt
(sizing checked against the arithmetic). It asserts no timing."""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "bench"))
import long_prompt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--loadgen", required=True)
    a = ap.parse_args()
    failures = []
    # tiny: 2 layers x 2 KV heads x head_dim 32 x K and V x 4 bytes = 1 KiB per token.
    if long_prompt.pool_mib("tiny", 2, 1000, 1.0, 4) != 1:
        failures.append(f"pool_mib(tiny, 2, 1000) = {long_prompt.pool_mib('tiny', 2, 1000, 1.0, 4)}")
    if long_prompt.pool_mib("7b", 32, 127_020, 1.0, 2) != 63_520:
        failures.append(f"pool_mib(7b, 32, 127020) = {long_prompt.pool_mib('7b', 32, 127_020, 1.0, 2)}")
    with tempfile.TemporaryDirectory(prefix="gqa-long-prompt-") as out:
        rows = long_prompt.main(["--server", a.server, "--loadgen", a.loadgen, "--backend", "cpu",
                                 "--shape", "tiny", "--kv_heads", "2", "--input_len", "600",
                                 "--chunks", "64,256", "--pool_factor", "4", "--out", out])
        with open(os.path.join(out, "results.json")) as f:
            saved = json.load(f)["rows"]
    if [r["chunk"] for r in rows] != [64, 256] or saved != rows:
        failures.append(f"rows: {rows}, saved: {saved}")
    for r in rows:
        if not r["ttft_p50_s"] > 0 or not r["prefill_tokens_per_s"] > 0:
            failures.append(f"chunk {r['chunk']}: {r}")
    for f in failures:
        print("FAIL:", f)
    print("long_prompt:", "FAILED" if failures else "ok", rows)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
