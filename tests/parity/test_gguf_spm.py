#!/usr/bin/env python3
"""GGUF import of SentencePiece vocabularies (tokenizer.ggml.model "llama": Llama 2, Mistral,
TinyLlama), whose files hold pieces and scores but no merges.

A SentencePiece-style BPE tokenizer (byte fallback, U+2581 for spaces) is trained fresh with
`tokenizers`, written into a tiny llama GGUF as tokens, scores and token types, and imported by
gqa-convert. The tokenizer.json we write must encode and decode every text exactly as the
tokenizer transformers builds from the same GGUF file (its GGUF converter: merges from scores),
and our C++ tokenizer must give the same ids, with BOS in front of prompts. Also refused: a
SentencePiece vocabulary without scores.

The same tiny llama file also checks Llama 3.1's rope scaling, which GGUF files carry as
per-frequency factors (rope_freqs.weight, as llama.cpp's converter computes them) rather than
parameters: the importer recovers rope_scaling {llama3, factor 8, 1, 4, 8192}, and refuses
factors of another form.
"""
import math
import argparse
import json
import pathlib
import random
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFWriter
from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers.integrations.ggml import convert_gguf_tokenizer
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE.parent / "tokenizer" / "corpus.txt"
SPECIALS = ["<unk>", "<s>", "</s>"]
failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures.append(what)


def train(lines):
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=SPECIALS + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def vocabulary(tok):
    """(pieces, scores, token types) as llama.cpp writes a SentencePiece BPE vocabulary: a merged
    piece scores minus its merge rank, other pieces below every merge."""
    model = json.loads(tok.to_str())["model"]
    vocab, merges = model["vocab"], model["merges"]
    pieces = [None] * len(vocab)
    for piece, i in vocab.items():
        pieces[i] = piece
    rank = {}
    for k, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, k)
    scores, types = [], []
    for i, piece in enumerate(pieces):
        if piece == "<unk>":
            scores.append(0.0), types.append(2)
        elif piece in SPECIALS:
            scores.append(0.0), types.append(3)
        elif piece.startswith("<0x") and len(piece) == 6:
            scores.append(0.0), types.append(6)
        else:
            scores.append(float(-rank.get(piece, len(merges) + i))), types.append(1)
    return pieces, scores, types


def llama3_rope_factors(theta, head_dim, factor=8.0, low=1.0, high=4.0, old_context=8192):
    """llama.cpp convert_hf_to_gguf.py's rope_freqs for Llama 3.1."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path, pieces, scores, types, *, with_scores=True, rope_factors=None):
    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads = 64, 128, 2, 1
    w = GGUFWriter(str(path), "llama")
    w.add_name("gqa-serve SentencePiece import test")
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    if rope_factors is not None:
        w.add_rope_freq_base(500000.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    if with_scores:
        w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (len(pieces), hidden), "blk.0.attn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv, hidden),
              "blk.0.attn_v.weight": (kv, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_norm.weight": (hidden,), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
              "output_norm.weight": (hidden,)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    if rope_factors is not None:
        w.add_tensor("rope_freqs.weight", rope_factors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def texts(lines, seed):
    rng = random.Random(seed)
    out = list(lines) + ["\n".join(lines[:20]), "  two  spaces", " leading", "trailing ",
                         "ünïcödé 日本語 😀 ٣ ３", "tabs\tand\nnewlines", "a" * 50, "x"]
    alphabet = "".join(sorted(set("".join(lines)))) + "ü日😀\t\n "
    for _ in range(100):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--convert", required=True)
    parser.add_argument("--tokenize", required=True)
    args = parser.parse_args()
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}")
    lines = [l for l in CORPUS.read_text(encoding="utf-8").splitlines() if l.strip()]
    trained = train(lines)
    pieces, scores, types = vocabulary(trained)
    cases = texts(lines, seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        src, out = work / "spm.gguf", work / "imported"
        write_gguf(src, pieces, scores, types)
        result = subprocess.run([args.convert, "--from-gguf", str(src), str(out)],
                                capture_output=True, text=True)
        check(result.returncode == 0, f"imports a SentencePiece vocabulary: {result.stderr.strip()}")
        if result.returncode != 0:
            return 1
        ours = Tokenizer.from_file(str(out / "tokenizer.json"))
        theirs = convert_gguf_tokenizer("llama", load_gguf_checkpoint(str(src))["tokenizer"])[0]
        bad_ids = [t for t in cases if ours.encode(t, add_special_tokens=False).ids !=
                   theirs.encode(t, add_special_tokens=False).ids]
        check(not bad_ids, f"ids equal transformers' GGUF conversion on {len(cases) - len(bad_ids)}"
              f"/{len(cases)} texts" + (f"; first {bad_ids[0]!r}" if bad_ids else ""))
        bad_text = [t for t in cases if ours.decode(ours.encode(t).ids) !=
                    theirs.decode(theirs.encode(t, add_special_tokens=False).ids)]
        check(not bad_text, f"decoded text equals transformers' on {len(cases) - len(bad_text)}"
              f"/{len(cases)} texts")
        same_as_trained = sum(ours.encode(t, add_special_tokens=False).ids ==
                              trained.encode(t).ids for t in cases)
        print(f"info {same_as_trained}/{len(cases)} texts encode as the originally trained "
              "tokenizer (merges rebuilt from scores may take other routes)")
        config = json.loads((out / "tokenizer_config.json").read_text())
        check(config["add_bos_token"] is True and config["bos_token"] == "<s>" and
              config["unk_token"] == "<unk>", "tokenizer_config: BOS added by default, <s>, <unk>")
        (work / "cases.json").write_text(json.dumps({"texts": cases}), encoding="utf-8")
        result = subprocess.run([args.tokenize, str(out), "--cases", str(work / "cases.json")],
                                capture_output=True, text=True, check=True)
        cxx = json.loads(result.stdout)
        bad_cxx = [t for t, o in zip(cases, cxx) if o["ids"] != ours.encode(t).ids[1:] or
                   o["prompt_ids"] != ours.encode(t).ids]
        check(not bad_cxx and ours.encode("hi").ids[0] == 1,
              f"the server's tokenizer: ids and prompt ids (BOS first) equal tokenizers' on "
              f"{len(cases) - len(bad_cxx)}/{len(cases)} texts")
        bad_src, bad_out = work / "no-scores.gguf", work / "refused"
        write_gguf(bad_src, pieces, scores, types, with_scores=False)
        result = subprocess.run([args.convert, "--from-gguf", str(bad_src), str(bad_out)],
                                capture_output=True, text=True)
        check(result.returncode == 1 and "tokenizer.ggml.scores" in result.stderr and
              not bad_out.exists(), f"refuses a vocabulary without scores: {result.stderr.strip()}")
        rope_src, rope_out = work / "rope.gguf", work / "rope"
        write_gguf(rope_src, pieces, scores, types, rope_factors=llama3_rope_factors(500000.0, 32))
        result = subprocess.run([args.convert, "--from-gguf", str(rope_src), str(rope_out)],
                                capture_output=True, text=True)
        rope = (json.loads((rope_out / "config.json").read_text()).get("rope_scaling")
                if result.returncode == 0 else result.stderr.strip())
        check(rope == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
              f"Llama 3.1 rope scaling recovered from rope_freqs.weight: {rope}")
        odd = llama3_rope_factors(500000.0, 32)
        odd[5] *= 1.5
        write_gguf(work / "odd-rope.gguf", pieces, scores, types, rope_factors=odd)
        result = subprocess.run([args.convert, "--from-gguf", str(work / "odd-rope.gguf"),
                                 str(work / "odd-rope")], capture_output=True, text=True)
        check(result.returncode == 1 and "rope_freqs.weight[5]" in result.stderr,
              f"refuses rope factors of another form: {result.stderr.strip()}")
    print("all SentencePiece import checks passed" if not failures else f"{len(failures)} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
