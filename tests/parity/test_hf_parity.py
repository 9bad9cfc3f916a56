#!/usr/bin/env python3
"""Parity of the CPU backend with Hugging Face transformers on random tiny checkpoints.

For each shape (MHA, GQA, MQA; F32, F16, BF16; Llama, Qwen2 with biases, Mistral with and without
a sliding window; llama3 rope scaling; tied embeddings) this writes a random checkpoint with gqa-make-checkpoint, runs our
backend through gqa-forward, runs transformers' model on the same directory in fp32, and checks:
  - the logits at every prompt position (fed one token per decode step over the paged cache),
  - the logits of the last prompt token after a chunked prefill,
  - a greedy continuation, token for token;
  - through the engine (gqa-forward --logprobs, chunked prefill): the prompt logprobs and the
    greedy continuation's logprobs with their top 5, against torch.log_softmax of transformers'
    logits (the continuation teacher-forced along our tokens).
Both sides compute in fp32 over the same stored weights, so the tolerance is tight.

With --backend cuda (on a GPU machine) our side computes in bf16 (float16 checkpoints in
float16): hidden 512 so that head_dim is 64, a bf16 tolerance, and greedy continuations must
agree up to the first position where transformers' own top two logits are closer than that
tolerance. The sliding-window case runs there too (the CUDA kernels apply the window).
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-4  # relative L2 error of logits
CUDA_TOLERANCE = 3e-2  # bf16 activations, weights and KV cache
GREEDY_TOKENS = 12
TOP_LOGPROBS = 5
LOGPROB_TOLERANCE = 1e-3  # absolute, fp32
# bf16: absolute up to |logprob| 5, then relative to the value (|ours - ref| / max(1, |ref| / 5)):
# a logit's bf16 error grows with the logit, and a random model's unlikely prompt tokens sit at
# logprobs of -10 to -40.
CUDA_LOGPROB_TOLERANCE = 0.15

CASES = [
    # name, make-checkpoint flags
    ("llama-mha-f32", ["--heads=8", "--kv_heads=8", "--dtype=f32"]),
    ("llama-gqa-f32", ["--heads=8", "--kv_heads=2", "--dtype=f32"]),
    ("llama-mqa-f32", ["--heads=8", "--kv_heads=1", "--dtype=f32"]),
    ("llama-mha-bf16", ["--heads=8", "--kv_heads=8", "--dtype=bf16"]),
    ("llama-gqa-bf16", ["--heads=8", "--kv_heads=2", "--dtype=bf16"]),
    ("llama-mqa-bf16", ["--heads=8", "--kv_heads=1", "--dtype=bf16"]),
    ("qwen2-gqa-bias-tied-bf16", ["--arch=qwen2", "--heads=8", "--kv_heads=2", "--dtype=bf16",
                                  "--tie", "--rope_theta=1000000"]),
    ("llama3-rope-bias-f16", ["--heads=4", "--kv_heads=2", "--head_dim=32", "--dtype=f16",
                              "--rope_scaling=llama3", "--attention_bias", "--rope_theta=500000"]),
    ("llama-linear-rope-f32", ["--heads=8", "--kv_heads=4", "--rope_scaling=linear",
                               "--dtype=f32"]),
    ("mistral-gqa-bf16", ["--arch=mistral", "--heads=8", "--kv_heads=2", "--dtype=bf16"]),
    # A window shorter than every prompt: positions past it see only the last 7 keys.
    ("mistral-window-7-f32", ["--arch=mistral", "--heads=8", "--kv_heads=2", "--dtype=f32",
                              "--sliding_window=7"]),
]


def relative_error(ours, ref):
    return (torch.linalg.norm(ours - ref) / torch.linalg.norm(ref)).item()


def hf_greedy_logits(model, ids, n):
    """Greedy tokens and, for each, the gap between transformers' top two logits and the
    logits' RMS."""
    tokens, gaps = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens])).logits[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(((top[0] - top[1]) / logits.pow(2).mean().sqrt()).item())
            tokens.append(int(torch.argmax(logits)))
    return tokens[len(ids):], gaps


def greedy_agrees(ours, hf_tokens, gaps, tolerance):
    """Equal, or equal up to a position where the reference nearly ties."""
    for i, (a, b) in enumerate(zip(ours, hf_tokens)):
        if a != b:
            return gaps[i] < 4 * tolerance
    return len(ours) == len(hf_tokens)


def logprobs_error(engine, prompt, model, relative=False):
    """The largest |ours - transformers'| over the prompt logprobs and the continuation's, their
    top values and the reference's value at each of our top ids (relative: divided by
    max(1, |reference| / 5)); None when the shape is wrong."""
    full = prompt + engine["tokens"]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
    prompt_lp, generated_lp = engine["prompt_logprobs"], engine["logprobs"]
    if (len(prompt_lp) != len(prompt) or len(generated_lp) != len(engine["tokens"])
            or prompt_lp[0]["logprob"] != 0 or prompt_lp[0]["top"]):
        return None
    worst = 0.0
    err = (lambda ours, ref: abs(ours - ref) / max(1.0, abs(ref) / 5)) if relative else \
        (lambda ours, ref: abs(ours - ref))
    # Position p's entry is the token at p given the tokens before it: row p - 1 of ref.
    entries = [(j, e) for j, e in enumerate(prompt_lp) if j > 0]
    entries += [(len(prompt) + i, e) for i, e in enumerate(generated_lp)]
    for position, entry in entries:
        row = ref[position - 1]
        if entry["token"] != full[position] or len(entry["top"]) != TOP_LOGPROBS:
            return None
        worst = max(worst, err(entry["logprob"], row[full[position]].item()))
        top_values = torch.topk(row, TOP_LOGPROBS).values.tolist()
        for (token, value), ref_value in zip(entry["top"], top_values):
            worst = max(worst, err(value, ref_value), err(value, row[token].item()))
    return worst


def cuda_flags(flags):
    """head_dim 64 (the CUDA kernels' smallest) in place of the CPU cases' tiny heads."""
    out = [f for f in flags if not f.startswith("--head_dim")]
    heads = int(next(f for f in flags if f.startswith("--heads=")).split("=")[1])
    return out + [f"--hidden={64 * heads}", "--head_dim=64"]


def check_case(args, name, flags, seed):
    cuda = args.backend == "cuda"
    tolerance = CUDA_TOLERANCE if cuda else TOLERANCE
    with tempfile.TemporaryDirectory() as model_dir:
        subprocess.run([args.make_checkpoint, f"--out={model_dir}", "--layers=2", "--hidden=64",
                        "--intermediate=160", "--vocab=211", f"--seed={seed}"]
                       + (cuda_flags(flags) if cuda else flags),
                       check=True)
        rng = random.Random(seed)
        prompt = [rng.randrange(211) for _ in range(rng.randrange(18, 40))]
        chunk = rng.choice([1, 5, 16, 17])
        result = subprocess.run(
            [args.forward, f"--model={model_dir}", "--ids=" + ",".join(map(str, prompt)),
             f"--chunk={chunk}", f"--generate={GREEDY_TOKENS}", f"--backend={args.backend}",
             f"--logprobs={TOP_LOGPROBS}"],
            check=True, capture_output=True, text=True)
        ours = json.loads(result.stdout)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            ref = model(torch.tensor([prompt])).logits[0].float()
        position_err = relative_error(torch.tensor(ours["position_logits"]), ref)
        prefill_err = relative_error(torch.tensor(ours["prefill_logits"]), ref[-1])
        hf_tokens, gaps = hf_greedy_logits(model, prompt, GREEDY_TOKENS)
        greedy_ok = (greedy_agrees(ours["greedy"], hf_tokens, gaps, tolerance) if cuda
                     else ours["greedy"] == hf_tokens)
        logprob_err = logprobs_error(ours["engine"], prompt, model, relative=cuda)
        logprob_ok = logprob_err is not None and logprob_err < (
            CUDA_LOGPROB_TOLERANCE if cuda else LOGPROB_TOLERANCE)
        ok = position_err < tolerance and prefill_err < tolerance and greedy_ok and logprob_ok
        print(f"{name:28s} prompt {len(prompt):3d} chunk {chunk:2d}  "
              f"position err {position_err:.2e}  prefill err {prefill_err:.2e}  "
              f"logprob err {'BAD SHAPE' if logprob_err is None else f'{logprob_err:.1e}'}  "
              f"greedy {'same' if ours['greedy'] == hf_tokens else 'DIFFERENT'}  "
              f"{'ok' if ok else 'FAIL'}", flush=True)
        if ours["greedy"] != hf_tokens:
            print(f"  ours {ours['greedy']}\n  hf   {hf_tokens}")
        return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--make-checkpoint", required=True)
    parser.add_argument("--forward", required=True)
    parser.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.manual_seed(0)
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}, backend {args.backend}, tolerance "
          f"{CUDA_TOLERANCE if args.backend == 'cuda' else TOLERANCE}")
    failures = [name for i, (name, flags) in enumerate(CASES)
                if not check_case(args, name, flags, seed + i)]
    if failures:
        print("FAILED:", ", ".join(failures))
        return 1
    print(f"all {len(CASES)} cases match transformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
