#!/usr/bin/env python3
"""Perplexity of a text under the model a gqa-server serves, from its prompt logprobs.

The text (or token ids) is scored in windows of --window tokens that start every --stride
tokens; each token is scored once, in the first window where it has at least one token of
context before it, as its log-probability given the window's tokens before it (the server's
GenerateResponse.prompt_logprobs, log_softmax of the raw logits in float32). With --stride
smaller than --window every token after the first window has at least window - stride tokens of
context (the usual sliding-window perplexity); the first token of the text is never scored.

    perplexity = exp(-(sum of the scored tokens' logprobs) / (scored tokens))

It talks to the server through gqa-cli (no Python gRPC needed). Usage:
  perplexity.py --cli build/client/gqa-cli --server localhost:50051 --file text.txt \\
      [--window 1024] [--stride 512] [--json]
  perplexity.py --cli ... --ids 1,2,3,...      (token ids; no tokenizer needed)
--window must leave room for one generated token under the server's max_model_len. A text given
with --text/--file travels as one command-line argument (at most about 128 KiB).
"""
import argparse
import json
import math
import subprocess
import sys


def run_cli(args, extra):
    cmd = [args.cli, f"--server={args.server}"] + extra
    if args.auth_token_file:
        cmd.append(f"--auth_token_file={args.auth_token_file}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"perplexity: gqa-cli failed: {result.stderr.strip()}")
    return result.stdout


def tokenize(args):
    if args.ids:
        return [int(x) for x in args.ids.split(",") if x.strip()]
    text = args.text if args.text is not None else open(args.file, encoding="utf-8").read()
    return json.loads(run_cli(args, ["--tokenize", f"--text={text}"]))


def prompt_logprobs(args, ids):
    """The server's prompt logprobs of `ids`: one per token, the first one 0."""
    out = run_cli(args, [f"--ids={','.join(map(str, ids))}", "--max_new_tokens=1",
                         "--ignore_eos", "--prompt_logprobs=0", "--json"])
    for line in out.splitlines():
        message = json.loads(line)
        if "prompt_logprobs" in message:
            values = [entry["logprob"] for entry in message["prompt_logprobs"]]
            if len(values) != len(ids):
                raise SystemExit(f"perplexity: {len(values)} prompt logprobs for {len(ids)} tokens")
            return values
    raise SystemExit("perplexity: the server sent no prompt_logprobs (is it older than them?)")


def windows(num_tokens, window, stride):
    """(begin, end, first scored position) for each window, every position >= 1 scored once."""
    scored_until = 1  # position 0 has no context
    begin = 0
    while scored_until < num_tokens:
        end = min(begin + window, num_tokens)
        first = max(scored_until, begin + 1)
        if first < end:
            yield begin, end, first
        scored_until = max(scored_until, end)
        begin += stride


def score(args, ids):
    total, count = 0.0, 0
    for begin, end, first in windows(len(ids), args.window, args.stride):
        values = prompt_logprobs(args, ids[begin:end])
        total += sum(values[first - begin:])
        count += end - first
    return total, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cli", required=True, help="gqa-cli binary")
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--auth_token_file", default="")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text")
    source.add_argument("--file")
    source.add_argument("--ids", help="comma-separated token ids")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=0, help="0: --window (no overlap)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.stride = args.stride or args.window
    if args.window < 2 or not 0 < args.stride <= args.window:
        raise SystemExit("perplexity: need --window >= 2 and 0 < --stride <= --window")
    ids = tokenize(args)
    if len(ids) < 2:
        raise SystemExit("perplexity: the text has fewer than 2 tokens")
    total, count = score(args, ids)
    result = {"tokens": len(ids), "scored_tokens": count, "sum_logprob": total,
              "mean_logprob": total / count, "perplexity": math.exp(-total / count)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {result['perplexity']:.4f} over {count} of {len(ids)} tokens "
              f"(mean logprob {result['mean_logprob']:.4f}; window {args.window}, stride "
              f"{args.stride})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
