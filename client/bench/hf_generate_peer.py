#!/usr/bin/env python3
"""The Hugging Face `generate` peer of the sweep's bigcode experiment (sweep.py): the time
transformers takes to generate a batch greedily with a random-weight Llama-shaped model of a
given number of KV heads, as bigcode's multi-query profiling timed HF generate (batch 8, 16
prompt tokens, 1024 new tokens: MHA 19.78 s, MQA 15.19 s on a V100).

Recipe: LlamaForCausalLM from a config alone (random weights, transformers' own init), eager
attention, bf16 on CUDA (fp32 on the CPU); a batch of random prompts (no padding); one short
warm-up generate, then generate(min_new_tokens = max_new_tokens = N, greedy, use_cache=True)
between torch.cuda.synchronize() calls (time.perf_counter on the CPU).

Output: one JSON line on stdout,
  {"kv_heads": K, "batch": B, "prompt": P, "new_tokens": N, "total_s": T, "per_step_ms": T/N*1e3}
everything else on stderr.

Usage:
  hf_generate_peer.py --shape 1b --kv_heads 32 [--batch 8 --prompt 16 --new_tokens 1024]
  hf_generate_peer.py --shape tiny --kv_heads 1 --device cpu --dtype fp32 --new_tokens 16
"""
import argparse
import json
import sys
import time

import torch
import transformers

SHAPES = {  # the same shapes as sweep.py's
    "1b": dict(layers=16, hidden=2048, heads=32, head_dim=64, ffn=8192, vocab=128256, tied=True,
               theta=500000.0),
    "8b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=14336, vocab=128256,
               tied=False, theta=500000.0),
    "7b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=11008, vocab=32000,
               tied=False, theta=10000.0),
    "tiny": dict(layers=2, hidden=128, heads=4, head_dim=32, ffn=256, vocab=512, tied=False,
                 theta=10000.0),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WARMUP_TOKENS = 8


def note(msg):
    print(f"hf_generate_peer: {msg}", file=sys.stderr, flush=True)


def llama_config(shape, kv_heads, max_len):
    s = SHAPES[shape]
    return transformers.LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=kv_heads, head_dim=s["head_dim"], max_position_embeddings=max_len,
        rms_norm_eps=1e-5, rope_theta=s["theta"], tie_word_embeddings=s["tied"],
        bos_token_id=0, eos_token_id=1, pad_token_id=0, attn_implementation="eager")


def build_model(config, device, dtype):
    """Random weights, built on the device where this torch can (torch >= 2.0)."""
    torch.manual_seed(0)
    if device.type == "cuda" and hasattr(torch.device, "__enter__"):
        with device:
            model = transformers.LlamaForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(model, prompts, new_tokens):
    return model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                          do_sample=False, num_beams=1, use_cache=True,
                          min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--kv_heads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per sequence")
    ap.add_argument("--new_tokens", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_generate_peer: CUDA is not available (use --device cpu)")
    if SHAPES[args.shape]["heads"] % args.kv_heads:
        sys.exit(f"hf_generate_peer: {args.kv_heads} KV heads do not divide "
                 f"{SHAPES[args.shape]['heads']} heads")
    torch.set_grad_enabled(False)
    config = llama_config(args.shape, args.kv_heads, args.prompt + args.new_tokens + 16)
    model = build_model(config, device, DTYPES[args.dtype])
    note(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.shape} "
         f"with {args.kv_heads} KV heads on {device} ({args.dtype}, eager attention)")
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(2, config.vocab_size, (args.batch, args.prompt), generator=gen)
    prompts = prompts.to(device)
    generate(model, prompts, min(WARMUP_TOKENS, args.new_tokens))
    sync(device)
    start = time.perf_counter()
    out = generate(model, prompts, args.new_tokens)
    sync(device)
    total = time.perf_counter() - start
    if tuple(out.shape) != (args.batch, args.prompt + args.new_tokens):
        sys.exit(f"hf_generate_peer: generate returned {tuple(out.shape)}, expected "
                 f"{(args.batch, args.prompt + args.new_tokens)}")
    print(json.dumps({"kv_heads": args.kv_heads, "batch": args.batch, "prompt": args.prompt,
                      "new_tokens": args.new_tokens, "total_s": round(total, 6),
                      "per_step_ms": round(total / args.new_tokens * 1e3, 6)}), flush=True)


if __name__ == "__main__":
    main()
