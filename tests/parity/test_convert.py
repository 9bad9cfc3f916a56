#!/usr/bin/env python3
"""gqa-convert against an independent computation, and converted checkpoints end to end.

- Mean-pooling checked against PyTorch (fp64 mean, rounded once to the stored dtype: bitwise for
  F32, BF16 and F16); every other tensor byte for byte; G equal to the source's KV heads
  reproduces every tensor byte for byte.
- The Python safetensors package reads every file written; transformers loads converted
  directories (single file and sharded) and its logits match our CPU backend's.
- MHA -> GQA-8 -> GQA-2 -> MQA, each served by gqa-server and answered over gRPC by gqa-cli.
- Every refusal: one error line, a non-zero exit, nothing left behind.
"""
import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
FAILURES = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        FAILURES.append(what)


def load_tensors(model_dir):
    tensors, metadata = {}, {}
    for path in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata.update(f.metadata() or {})
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors, metadata


def mean_pool(t, heads, groups, head_dim):
    shape = t.shape
    x = t.double().reshape(groups, heads // groups, head_dim, -1).mean(dim=1)
    return x.reshape(groups * head_dim, *shape[1:]).to(t.dtype)


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def check_conversion(args, work, dtype):
    src = work / f"mha-{dtype}"
    run([args.make_checkpoint, f"--out={src}", "--layers=2", "--hidden=128", "--heads=16",
         "--kv_heads=16", "--head_dim=8", "--intermediate=96", "--vocab=211",
         f"--dtype={dtype}", f"--seed={random.randrange(1 << 30)}"]).check_returncode()
    source, _ = load_tensors(src)
    for groups in (16, 8, 2, 1):
        out = work / f"{dtype}-g{groups}"
        result = run([args.convert, "--kv-heads", groups, src, out])
        check(result.returncode == 0, f"{dtype}: convert to {groups} KV heads ({result.stderr.strip()})")
        converted, metadata = load_tensors(out)
        config = json.loads((out / "config.json").read_text())
        check(config["num_key_value_heads"] == groups and
              config["gqa_conversion"]["source_num_key_value_heads"] == 16 and
              "gqa_conversion" in metadata, f"{dtype} G={groups}: conversion recorded")
        check(set(converted) == set(source), f"{dtype} G={groups}: same tensor names")
        pooled_ok = copied_ok = True
        for name, t in source.items():
            if name.endswith(("k_proj.weight", "v_proj.weight")):
                pooled_ok &= torch.equal(converted[name], mean_pool(t, 16, groups, 8))
            else:
                copied_ok &= torch.equal(converted[name], t)
        check(pooled_ok, f"{dtype} G={groups}: K/V equal PyTorch's mean pool bitwise")
        check(copied_ok, f"{dtype} G={groups}: other tensors byte for byte")
        if groups == 16:
            check(all(torch.equal(converted[n], t) for n, t in source.items()),
                  f"{dtype}: G = source KV heads reproduces every tensor")


def forward_logits(args, model_dir, prompt):
    result = run([args.forward, f"--model={model_dir}", "--ids=" + ",".join(map(str, prompt)),
                  "--generate=0"])
    result.check_returncode()
    return torch.tensor(json.loads(result.stdout)["position_logits"])


def check_transformers(args, work):
    src = work / "qwen2"
    run([args.make_checkpoint, f"--out={src}", "--arch=qwen2", "--layers=2", "--hidden=64",
         "--heads=8", "--kv_heads=4", "--intermediate=96", "--vocab=211", "--dtype=bf16",
         f"--seed={random.randrange(1 << 30)}"]).check_returncode()
    for groups, shard in ((2, "5GiB"), (1, "20000")):
        out = work / f"qwen2-g{groups}"
        run([args.convert, "--kv-heads", groups, "--max-shard-size", shard, src, out]).check_returncode()
        sharded = (out / "model.safetensors.index.json").exists()
        source, _ = load_tensors(src)
        converted, _ = load_tensors(out)
        bias = "model.layers.1.self_attn.v_proj.bias"
        check(torch.equal(converted[bias], mean_pool(source[bias], 4, groups, 8)),
              f"qwen2 G={groups}: biases pooled too")
        model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
        prompt = [random.randrange(211) for _ in range(21)]
        with torch.no_grad():
            ref = model(torch.tensor([prompt])).logits[0]
        ours = forward_logits(args, out, prompt)
        err = (torch.linalg.norm(ours - ref) / torch.linalg.norm(ref)).item()
        check(err < 1e-4, f"qwen2 G={groups} ({'sharded' if sharded else 'one file'}): "
                          f"transformers loads it, logits match ours (rel err {err:.1e})")


def serve_and_ask(args, model_dir, groups):
    port_file = model_dir.parent / f"ports-{groups}"
    server = subprocess.Popen([args.server, f"--model={model_dir}", "--host=127.0.0.1", "--port=0",
                               "--metrics_port=0", "--http_port=0", f"--port_file={port_file}",
                               "--kv_cache_memory=64MiB"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            if server.poll() is not None:
                break
            time.sleep(0.05)
        grpc_port = port_file.read_text().split()[0]
        address = f"127.0.0.1:{grpc_port}"
        info = json.loads(run([args.cli, f"--server={address}", "--info"]).stdout)
        reply = run([args.cli, f"--server={address}", "--ids=5,6,7,8", "--max_new_tokens=6",
                     "--ignore_eos", "--json"])
        final = json.loads(reply.stdout.strip().splitlines()[-1])
        check(info["numKeyValueHeads"] == groups and info.get("convertedFromKvHeads") and
              final["finish_reason"] == "FINISH_REASON_LENGTH" and
              final["usage"]["completion_tokens"] == 6,
              f"served with {groups} KV heads (converted from {info.get('convertedFromKvHeads')})")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def check_chain_serves(args, work):
    previous = work / "chain-mha"
    run([args.make_checkpoint, f"--out={previous}", "--layers=2", "--hidden=128", "--heads=16",
         "--kv_heads=16", "--head_dim=8", "--vocab=211", "--dtype=bf16"]).check_returncode()
    for groups in (8, 2, 1):  # MHA -> GQA-8 -> GQA-2 -> MQA, each from the previous
        out = work / f"chain-g{groups}"
        run([args.convert, "--kv-heads", groups, previous, out]).check_returncode()
        serve_and_ask(args, out, groups)
        previous = out


def check_refusals(args, work):
    src = work / "refuse-src"
    run([args.make_checkpoint, f"--out={src}", "--heads=8", "--kv_heads=8",
         "--dtype=f32"]).check_returncode()

    def refused(cmd_args, expect_in_message, what, code=1):
        dst = work / "refused-out"
        result = run([args.convert] + cmd_args(dst))
        leftovers = [p for p in work.iterdir() if p.name.startswith("refused-out")]
        lines = result.stderr.strip().splitlines()
        check(result.returncode == code and len(lines) == 1 and expect_in_message in lines[0]
              and not leftovers, f"refuses {what}: {lines[0] if lines else '(no message)'}")

    refused(lambda d: ["--kv-heads", 3, src, d], "--kv-heads 3", "a G that does not divide 8")
    refused(lambda d: ["--kv-heads", 16, src, d], "--kv-heads 16", "G above the source's heads")
    refused(lambda d: ["--kv-heads", 0, src, d], "usage", "G = 0", code=2)
    refused(lambda d: ["--kv-heads", 2, work / "missing", d], "config.json", "a missing source")
    arch = work / "refuse-arch"
    subprocess.run(["cp", "-r", str(src), str(arch)], check=True)
    config = json.loads((arch / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (arch / "config.json").write_text(json.dumps(config))
    refused(lambda d: ["--kv-heads", 2, arch, d], "GPTNeoXForCausalLM", "an unsupported architecture")
    broken = work / "refuse-broken"
    subprocess.run(["cp", "-r", str(src), str(broken)], check=True)
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    refused(lambda d: ["--kv-heads", 2, broken, d], "model.safetensors", "a truncated source")
    existing = work / "refused-out"
    existing.mkdir()
    result = run([args.convert, "--kv-heads", 2, src, existing])
    check(result.returncode == 1 and "already exists" in result.stderr and
          not any(existing.iterdir()), "refuses an existing destination and leaves it alone")
    existing.rmdir()


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--make-checkpoint", "--convert", "--forward", "--server", "--cli"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    seed = random.SystemRandom().randrange(1 << 30)
    random.seed(seed)
    print(f"seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        for dtype in DTYPES:
            check_conversion(args, work, dtype)
        check_transformers(args, work)
        check_chain_serves(args, work)
        check_refusals(args, work)
    if FAILURES:
        print(f"{len(FAILURES)} FAILED")
        return 1
    print("all conversion checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
