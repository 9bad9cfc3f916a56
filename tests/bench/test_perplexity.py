#!/usr/bin/env python3
"""CI test of client/bench/perplexity.py against the real gqa-server (CPU backend, a random tiny
checkpoint): the perplexity of 60 token ids in one window equals exp(-mean) of the prompt
logprobs gqa-cli prints for them (position 0 unscored); non-overlapping windows of 20 score 57
tokens and equal the sum over three direct calls; overlapping windows score every token once;
a window's prompt logprobs equal those of the same prefix inside a longer prompt.

Usage: test_perplexity.py --server gqa-server --cli gqa-cli --make-checkpoint gqa-make-checkpoint
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "client", "bench", "perplexity.py")
VOCAB = 211


def prompt_logprobs(cli, address, ids):
    out = subprocess.run([cli, f"--server={address}", f"--ids={','.join(map(str, ids))}",
                          "--max_new_tokens=1", "--ignore_eos", "--prompt_logprobs=0", "--json"],
                         check=True, capture_output=True, text=True).stdout
    first = json.loads(out.splitlines()[0])
    return [entry["logprob"] for entry in first["prompt_logprobs"]]


def perplexity(cli, address, ids, window, stride):
    out = subprocess.run([sys.executable, SCRIPT, f"--cli={cli}", f"--server={address}",
                          f"--ids={','.join(map(str, ids))}", f"--window={window}",
                          f"--stride={stride}", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def check(cli, address):
    rng = random.Random(7)
    ids = [rng.randrange(VOCAB) for _ in range(60)]
    whole = prompt_logprobs(cli, address, ids)
    assert len(whole) == 60 and whole[0] == 0, whole[:3]
    assert all(v < 0 for v in whole[1:]), "logprobs of a softmax are negative"
    expected = math.exp(-sum(whole[1:]) / 59)
    one = perplexity(cli, address, ids, 100, 100)
    assert one["scored_tokens"] == 59, one
    assert math.isclose(one["perplexity"], expected, rel_tol=1e-9), (one, expected)

    split = perplexity(cli, address, ids, 20, 20)
    assert split["scored_tokens"] == 57, split
    direct = sum(sum(prompt_logprobs(cli, address, ids[b:b + 20])[1:]) for b in (0, 20, 40))
    assert math.isclose(split["sum_logprob"], direct, rel_tol=1e-9), (split, direct)

    overlapping = perplexity(cli, address, ids, 20, 7)
    assert overlapping["scored_tokens"] == 59, overlapping

    prefix = prompt_logprobs(cli, address, ids[:20])
    worst = max(abs(a - b) for a, b in zip(prefix, whole[:20]))
    assert worst < 1e-4, f"a prefix's logprobs differ inside a longer prompt by {worst}"
    print(f"ok: perplexity {one['perplexity']:.3f} (whole), {split['perplexity']:.3f} "
          f"(windows of 20), {overlapping['perplexity']:.3f} (stride 7)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument("--make-checkpoint", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        subprocess.run([args.make_checkpoint, f"--out={model}", "--layers=2", "--hidden=64",
                        "--intermediate=160", f"--vocab={VOCAB}", "--heads=4", "--kv_heads=2",
                        "--dtype=f32", "--seed=3"], check=True, capture_output=True)
        ports = os.path.join(tmp, "ports")
        log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(
            [args.server, f"--model={model}", "--backend=cpu", "--port=0", "--metrics_port=0",
             "--http_port=0", f"--port_file={ports}", "--max_num_batched_tokens=16", "--max_num_seqs=8"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                if os.path.exists(ports) and os.path.getsize(ports) > 0:
                    break
                if server.poll() is not None:
                    break
                time.sleep(0.25)
            else:
                raise SystemExit("gqa-server did not start")
            if server.poll() is not None:
                raise SystemExit("gqa-server exited:\n" + open(log.name).read())
            check(args.cli, f"127.0.0.1:{open(ports).read().split()[0]}")
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
