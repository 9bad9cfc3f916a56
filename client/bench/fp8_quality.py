#!/usr/bin/env python3
"""The quality cost of an FP8 (E4M3) KV cache: the same model served twice, with
--kv_cache_dtype=<reference> (default auto: bf16 on a GPU, fp32 on the CPU) and with
--kv_cache_dtype=fp8_e4m3, compared on a fixed text. Prints two figures:

  greedy token agreement: over every position of the text (teacher-forced: both read the same
      tokens), the share where the most likely next token is the same; and over --generate greedy
      tokens continued from a few prompts, the share generated identically before the first
      divergence.
  mean KL(reference || fp8) of the next-token distributions over the text's positions, from the
      server's prompt logprobs with the top --top (at most 20) alternatives: tokens in both top
      lists keep their own probability, the rest of the vocabulary is one bucket. Grouping never
      raises a KL divergence, so this is a lower bound of the full-vocabulary KL (tight when the
      top 20 hold nearly all the mass).

It starts gqa-server itself, one configuration at a time (so one GPU holds one copy), and talks
to it through gqa-cli. The demo model (deploy/demo.sh) is SmolLM2-135M-Instruct:
  gguf=$(deploy/fetch-smollm2.sh) && build/server/gqa-convert --from-gguf "$gguf" build/smollm2
  client/bench/fp8_quality.py --server build/server/gqa-server --cli build/client/gqa-cli \\
      --model build/smollm2 [--backend cuda] [--file text.txt] [--json]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dummy_server import ModelServer  # noqa: E402

# A fixed text (public-domain style prose, no special tokens) so that runs compare.
TEXT = (
    "The lighthouse stood at the end of a long spit of sand, and every evening the keeper climbed "
    "its hundred and twelve steps to light the lamp. He had done so for thirty years, through "
    "storms that shook the glass and calms so still that the sea looked like a sheet of tin. Ships "
    "passed far out on the horizon, and he kept a log of each one: its flag, its heading, the hour "
    "it crossed the line between the two rocks that marked the channel. In the winter the supply "
    "boat came only once a month, and he learned to bake bread, to mend nets, and to read the "
    "weather in the color of the gulls. His daughter wrote to him from the city about trains and "
    "electric lights and a bridge of steel that crossed the river in a single span. He answered "
    "each letter with a drawing of the coast, the tide tables for the coming month, and a short "
    "note about the birds. When the engineers arrived to install an automatic beacon, they found "
    "the logbooks stacked to the ceiling, every page filled in the same careful hand. They asked "
    "him what he would do now. He said he would walk along the shore and count the ships, as he "
    "always had, only now nobody would need to know the number.")
PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Once upon a time, in a small village by the sea,", "The three primary colors are"]


def run_cli(args, address, extra):
    result = subprocess.run([args.cli, f"--server={address}"] + extra, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"fp8_quality: gqa-cli failed: {result.stderr.strip()}")
    return result.stdout


def first_message(out):
    for line in out.splitlines():
        message = json.loads(line)
        if "prompt_logprobs" in message or "token_ids" in message:
            return message
    raise SystemExit("fp8_quality: gqa-cli printed no response")


def measure(args, address, ids):
    """Per text position: {token: logprob} of the top alternatives; greedy continuations."""
    out = run_cli(args, address, [f"--ids={','.join(map(str, ids))}", "--max_new_tokens=1",
                                  "--ignore_eos", f"--prompt_logprobs={args.top}", "--json"])
    positions = [{t[0]: t[1] for t in entry["top"]}
                 for entry in first_message(out)["prompt_logprobs"][1:]]
    generations = []
    # A text model continues the prompts; with --ids, prefixes of the ids.
    prompts = ([f"--text={p}" for p in args.prompts] if not args.ids else
               [f"--ids={','.join(map(str, ids[:k]))}" for k in (3, 8, 17) if k < len(ids)])
    for prompt in prompts if args.generate > 0 else []:
        out = run_cli(args, address, [prompt, f"--max_new_tokens={args.generate}",
                                      "--temperature=0", "--ignore_eos", "--json"])
        tokens = []
        for line in out.splitlines():
            tokens += json.loads(line).get("token_ids", [])
        generations.append(tokens)
    return positions, generations


def kl_grouped(p_top, q_top):
    """KL(p || q) over the tokens in both top lists plus one bucket for the rest."""
    shared = [t for t in p_top if t in q_top]
    p = [math.exp(p_top[t]) for t in shared]
    q = [math.exp(q_top[t]) for t in shared]
    p_rest, q_rest = max(0.0, 1.0 - sum(p)), max(0.0, 1.0 - sum(q))
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)
    if p_rest > 1e-12:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-12)))
    return max(0.0, kl)


def compare(reference, fp8):
    (ref_pos, ref_gen), (fp8_pos, fp8_gen) = reference, fp8
    top1 = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(ref_pos, fp8_pos))
    kls = [kl_grouped(a, b) for a, b in zip(ref_pos, fp8_pos)]
    same_prefix, generated = 0, 0
    for a, b in zip(ref_gen, fp8_gen):
        generated += len(a)
        for x, y in zip(a, b):
            if x != y:
                break
            same_prefix += 1
    return {"positions": len(ref_pos), "greedy_agreement": top1 / len(ref_pos),
            "mean_kl": sum(kls) / len(kls), "max_kl": max(kls),
            "generated_tokens": generated,
            "generation_agreement": same_prefix / generated if generated else 1.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="gqa-server binary")
    parser.add_argument("--cli", required=True, help="gqa-cli binary")
    parser.add_argument("--model", required=True, help="a converted checkpoint directory")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--reference", default="auto", help="--kv_cache_dtype to compare with")
    parser.add_argument("--candidate", default="fp8_e4m3", help="--kv_cache_dtype under test")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", help="the text (default: a built-in paragraph)")
    source.add_argument("--ids", help="comma-separated token ids instead of a text")
    parser.add_argument("--top", type=int, default=20, help="alternatives per position, <= 20")
    parser.add_argument("--generate", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--prompt", action="append", dest="prompts", help="(repeatable)")
    parser.add_argument("--server_arg", action="append", default=[],
                        help="extra gqa-server flag, e.g. --server_arg=--max_model_len=2048")
    parser.add_argument("--startup_timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.prompts = args.prompts or PROMPTS
    if not 1 <= args.top <= 20:
        raise SystemExit("fp8_quality: --top must be 1 ... 20")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run, dtype in enumerate((args.reference, args.candidate)):
            # One configuration at a time, so that one GPU holds one copy.
            flags = [f"--backend={args.backend}", f"--kv_cache_dtype={dtype}", "--deterministic",
                     *args.server_arg]
            with ModelServer(args.server, args.model, flags, os.path.join(tmp, f"server-{run}.log"),
                             args.startup_timeout) as server:
                if args.ids:
                    ids = [int(x) for x in args.ids.split(",") if x.strip()]
                else:
                    text = open(args.file, encoding="utf-8").read() if args.file else TEXT
                    ids = json.loads(run_cli(args, server.address, ["--tokenize", f"--text={text}"]))
                results[run] = measure(args, server.address, ids)
    figures = compare(results[0], results[1])
    figures.update({"reference": args.reference, "candidate": args.candidate, "model": args.model})
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.candidate} vs {args.reference} on {figures['positions']} positions of "
              f"{args.model}:")
        print(f"  greedy token agreement (teacher-forced): {100 * figures['greedy_agreement']:.2f}%")
        print(f"  mean KL(reference || {args.candidate}): {figures['mean_kl']:.3g} nats "
              f"(max {figures['max_kl']:.3g}; top-{args.top} + rest, a lower bound)")
        if figures["generated_tokens"]:
            print(f"  greedy generation identical before the first divergence: "
                  f"{100 * figures['generation_agreement']:.1f}% of "
                  f"{figures['generated_tokens']} generated tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
