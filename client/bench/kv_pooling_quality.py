#!/usr/bin/env python3
"""What mean-pooling KV heads costs before any uptraining (the GQA paper's warning): the
next-token distributions of converted models against their source, over an ordinary paragraph.

For each converted directory: mean KL(source || converted) per position (nats), top-1 agreement
(the converted model's argmax equals the source's), and each model's perplexity on the paragraph.
transformers loads every directory in fp32 on the CPU.

  python3 client/bench/kv_pooling_quality.py --source SRC_DIR CONVERTED_DIR...
"""
import argparse
import math

import torch
from transformers import AutoModelForCausalLM
from tokenizers import Tokenizer

PARAGRAPH = (
    "The river runs through the middle of the old town, and most of the houses along its banks "
    "were built more than two hundred years ago. In the morning the fishermen take their boats "
    "out before sunrise, and by noon the market square is full of people buying bread, cheese "
    "and vegetables from the farms in the valley. Children walk to the school on the hill, where "
    "a single teacher once taught every class in one room. Today the building is a small museum, "
    "and visitors can still see the wooden desks, the chalkboard and the map of the world that "
    "hung on the wall when the town had no road to the city. In winter the river sometimes "
    "freezes, and the whole town comes out to skate on the ice while the bakers sell hot bread "
    "from carts along the bank.")


def next_token_logprobs(model_dir, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)  # [positions, vocab]


def perplexity(logprobs, ids):
    targets = torch.tensor(ids[1:])
    nll = -logprobs[:-1].gather(1, targets[:, None]).squeeze(1)
    return math.exp(float(nll.mean()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("converted", nargs="+")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(f"{args.source}/tokenizer.json")
    ids = tokenizer.encode(PARAGRAPH).ids
    source = next_token_logprobs(args.source, ids)
    print(f"paragraph: {len(ids)} tokens; source {args.source}: perplexity "
          f"{perplexity(source, ids):.2f}")
    print(f"{'model':40s} {'mean KL (nats)':>15s} {'top-1 agree':>12s} {'perplexity':>11s}")
    for directory in [args.source] + args.converted:
        converted = next_token_logprobs(directory, ids)
        kl = (source.exp() * (source - converted)).sum(-1)
        agree = (source.argmax(-1) == converted.argmax(-1)).float().mean()
        print(f"{directory:40s} {float(kl.mean()):15.4f} {float(agree) * 100:11.1f}% "
              f"{perplexity(converted, ids):11.2f}")


if __name__ == "__main__":
    main()
