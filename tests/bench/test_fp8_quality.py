#!/usr/bin/env python3
"""CI test of client/bench/fp8_quality.py against the real gqa-server (CPU backend, a random
tiny checkpoint): the reference against itself agrees on every position and token with KL 0
(the CPU backend is deterministic); fp8_e4m3 against it gives figures in range and a KL above 0
(FP8 rounding reaches the logits). Also checks the grouped KL on hand-made distributions.

Usage: test_fp8_quality.py --server gqa-server --cli gqa-cli --make-checkpoint gqa-make-checkpoint
"""
import argparse
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "client", "bench", "fp8_quality.py")
VOCAB = 211


def run(args, model, ids, reference, candidate):
    out = subprocess.run([sys.executable, SCRIPT, f"--server={args.server}", f"--cli={args.cli}",
                          f"--model={model}", "--backend=cpu", f"--ids={','.join(map(str, ids))}",
                          f"--reference={reference}", f"--candidate={candidate}",
                          "--generate=12", "--json", "--server_arg=--max_num_batched_tokens=64"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def check_kl():
    spec = importlib.util.spec_from_file_location("fp8_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    p = {1: math.log(0.5), 2: math.log(0.3)}
    assert module.kl_grouped(p, p) == 0
    q = {1: math.log(0.3), 2: math.log(0.5)}
    want = 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.5)  # rest: 0.2 vs 0.2
    assert abs(module.kl_grouped(p, q) - want) < 1e-12
    # token 2 is missing from q's list: it joins the rest bucket (0.5 against 0.4)
    want = 0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)
    assert abs(module.kl_grouped(p, {1: math.log(0.6)}) - want) < 1e-12


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument("--make-checkpoint", required=True)
    args = parser.parse_args()
    check_kl()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        subprocess.run([args.make_checkpoint, f"--out={model}", "--layers=2", "--hidden=64",
                        "--intermediate=160", f"--vocab={VOCAB}", "--heads=4", "--kv_heads=2",
                        "--dtype=f32", "--seed=5"], check=True, capture_output=True)
        rng = random.Random(3)
        ids = [rng.randrange(VOCAB) for _ in range(48)]
        same = run(args, model, ids, "auto", "auto")
        assert same["positions"] == 47, same
        assert same["greedy_agreement"] == 1.0 and same["mean_kl"] == 0.0, same
        assert same["generation_agreement"] == 1.0 and same["generated_tokens"] == 36, same
        fp8 = run(args, model, ids, "auto", "fp8_e4m3")
        assert 0.0 <= fp8["greedy_agreement"] <= 1.0, fp8
        assert 0.0 <= fp8["generation_agreement"] <= 1.0, fp8
        assert 0.0 < fp8["mean_kl"] < 1.0, fp8
        print(f"ok: fp8_e4m3 vs fp32 on a random model: agreement "
              f"{fp8['greedy_agreement']:.3f}, mean KL {fp8['mean_kl']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
