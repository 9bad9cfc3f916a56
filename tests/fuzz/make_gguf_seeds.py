#!/usr/bin/env python3
"""Seeds for fuzz_gguf: tiny llama and qwen2 GGUF files (byte-level and SentencePiece
vocabularies, a few tensor types) written with the `gguf` package. Usage: make_gguf_seeds.py DIR"""
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.quants import quantize

BYTES = [chr(c) for c in range(33, 127)]


def write(path, arch, vocab_kind, qtype):
    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads, vocab = 32, 64, 2, 1, len(BYTES) + 2
    w = GGUFWriter(str(path), arch)
    w.add_name("seed")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    tokens = ["<s>", "</s>"] + BYTES
    w.add_tokenizer_model("gpt2" if vocab_kind == "bpe" else "llama")
    w.add_tokenizer_pre("smollm" if vocab_kind == "bpe" else "default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * len(BYTES))
    if vocab_kind == "bpe":
        w.add_token_merges(["a b"])
    else:
        w.add_token_scores([0.0, 0.0] + [-float(i) for i in range(len(BYTES))])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (vocab, hidden), "blk.0.attn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv, hidden),
              "blk.0.attn_v.weight": (kv, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_norm.weight": (hidden,), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
              "output_norm.weight": (hidden,)}
    if arch == "qwen2":
        shapes.update({"blk.0.attn_q.bias": (hidden,), "blk.0.attn_k.bias": (kv,),
                       "blk.0.attn_v.bias": (kv,)})
    for name, shape in shapes.items():
        values = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2 and qtype != T.F32:
            w.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write(out / "llama-bpe-q8.gguf", "llama", "bpe", T.Q8_0)
    write(out / "llama-spm-f32.gguf", "llama", "spm", T.F32)
    write(out / "qwen2-bpe-bf16.gguf", "qwen2", "bpe", T.BF16)


if __name__ == "__main__":
    main()
