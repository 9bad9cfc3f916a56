#!/usr/bin/env python3
"""gqa-convert --from-gguf against the `gguf` Python package, on small synthetic GGUF files.

- Every supported tensor type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
  appears; random block bytes with finite fp16 scales (zeros, -0 and subnormals included). With
  --dtype float32 every tensor equals gguf.quants.dequantize bitwise (llama's Q and K with
  llama.cpp's rotary permutation undone, qwen2's as they are); bfloat16 (the default) equals that
  rounded to nearest even on the fp32 bits; float16 equals numpy's astype(float16). Names, HF
  shapes (reversed GGUF dims), no extra tensors, a sharded import with its index.
- Tied embeddings when output.weight is absent, lm_head.weight when it is present.
- config.json, generation_config.json and tokenizer_config.json from the metadata.
- tokenizer.json: vocab, merges and added tokens; it loads in `tokenizers`, pre-tokenizes like the
  reference pre-tokenizer of each tokenizer.ggml.pre value and encodes like a reference tokenizer
  built from the same vocab and merges.
- Refusals (unsupported types, truncated file, bad magic, existing destination, unknown
  tokenizer.ggml.pre, missing file): exit 1, one `gqa-convert: ` line, nothing left behind.
"""
import argparse
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors import safe_open
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 256, 2, 4, 2, 512
HEAD_DIM = HIDDEN // HEADS
SUPPORTED = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K,
             T.Q5_K, T.Q6_K]
NORM_TYPES = [T.F32, T.F16, T.BF16]
# Byte offsets of the fp16 scale/min fields inside one block of each quantized type.
FP16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
               T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2),
               T.Q6_K: (208,)}
FAILURES = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        FAILURES.append(what)
    return condition


# ---------------------------------------------------------------- vocabulary


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_CHARS = bytes_to_unicode()
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ t", "Ġt he", "1 2", "12 3", "Ġ w", "o r", "Ġw or",
          "l d", "Ġwor ld"]
CONTROL = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool_call>"]
TOKENS = ([BYTE_CHARS[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] +
          CONTROL + USER_DEFINED)
TOKEN_TYPES = [1] * (len(TOKENS) - len(CONTROL) - len(USER_DEFINED)) + [3] * len(CONTROL) + \
              [4] * len(USER_DEFINED)
ID = {t: i for i, t in enumerate(TOKENS)}
VOCAB = len(TOKENS)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{# \"quoted\" \\ tab:\t é 中 #}")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def reference_pre_tokenizer(pre):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raw_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt-2", "default"):
        return byte_level
    split = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}[pre]
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"), raw_bytes])


def reference_tokenizer(pre):
    tok = Tokenizer(models.BPE(vocab=dict(ID), merges=[tuple(m.split(" ")) for m in MERGES]))
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = reference_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in USER_DEFINED])
    return tok


PROBES = ["hello world", "Hello the world!", "12345 1234567 12", "I'll we've DON'T 'S",
          "  several   spaces\n\nnew lines\r\n\ttab", "ünïcödé e\u0301 中文 🙂 ÿ",
          "<|im_start|>user\nhello<|im_end|>\n", "x<tool_call>y the", "<|begin_of_text|>the 123",
          "$3.14 + 1e-5 = ??? ...", "\"quoted\" \\back\\slash"]


# ---------------------------------------------------------------- synthetic GGUF files


def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def fp16_values(rng, n, scale):
    v = (rng.standard_normal(n) * scale).astype(np.float16)
    specials = np.array([0.0, -0.0, 2.0 ** -24, -3 * 2.0 ** -24, 2.0 ** -15, 6.1e-5], np.float16)
    k = min(n, len(specials))
    v[rng.choice(n, k, replace=False)] = specials[:k]
    return v


# fp32 values whose rounding to bf16/fp16 is interesting: ties (even and odd), subnormals,
# fp16 underflow.
F32_SPECIALS = np.concatenate([
    np.array([0x00000000, 0x80000000, 0x00000001, 0x80123456, 0x3F808000, 0x3F818000, 0xBF808000,
              0x3F80FFFF, 0x3F817FFF], np.uint32).view(np.float32),
    np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 2 ** -25, 3 * 2 ** -25, 1e-8,
              65519.0, 1e-40], np.float32)])


def raw_tensor(rng, qtype, shape):
    """Random valid bytes for a tensor of numpy shape `shape` (rows..., cols) in `qtype`."""
    n = int(np.prod(shape))
    cols = shape[-1]
    block, size = GGML_QUANT_SIZES[qtype]
    assert cols % block == 0, (qtype.name, shape)
    if qtype == T.F32:
        v = (rng.standard_normal(n) * 0.5).astype(np.float32)
        v[rng.choice(n, len(F32_SPECIALS), replace=False)] = F32_SPECIALS
        data = v.view(np.uint8)
    elif qtype == T.F16:
        data = fp16_values(rng, n, 0.5).view(np.uint8)
    elif qtype == T.BF16:
        bits = (rng.standard_normal(n) * 0.5).astype(np.float32).view(np.uint32) >> 16
        bits[rng.choice(n, 4, replace=False)] = [0x0000, 0x8000, 0x0001, 0x807F]
        data = bits.astype(np.uint16).view(np.uint8)
    else:
        blocks = rng.integers(0, 256, size=(n // block, size), dtype=np.uint8)
        for offset in FP16_FIELDS.get(qtype, ()):
            scales = fp16_values(rng, n // block, 0.02)
            blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
        data = blocks
    return data.reshape(*shape[:-1], cols // block * size)


def model_tensors(arch, with_output):
    """(gguf name, numpy shape) in llama.cpp's order; numpy shape = reversed GGUF ne."""
    kv = KV_HEADS * HEAD_DIM
    names = [("token_embd.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        b = f"blk.{i}."
        names += [(b + "attn_norm.weight", (HIDDEN,)), (b + "attn_q.weight", (HIDDEN, HIDDEN)),
                  (b + "attn_k.weight", (kv, HIDDEN)), (b + "attn_v.weight", (kv, HIDDEN))]
        if arch == "qwen2":
            names += [(b + "attn_q.bias", (HIDDEN,)), (b + "attn_k.bias", (kv,)),
                      (b + "attn_v.bias", (kv,))]
        names += [(b + "attn_output.weight", (HIDDEN, HIDDEN)), (b + "ffn_norm.weight", (HIDDEN,)),
                  (b + "ffn_gate.weight", (FFN, HIDDEN)), (b + "ffn_up.weight", (FFN, HIDDEN)),
                  (b + "ffn_down.weight", (HIDDEN, FFN))]
    names.append(("output_norm.weight", (HIDDEN,)))
    if with_output:
        names.append(("output.weight", (VOCAB, HIDDEN)))
    return names


ARCH_META = {
    "llama": dict(context=4096, eps=1e-5, rope_base=500000.0, bos="<|begin_of_text|>",
                  eos="<|end_of_text|>", add_bos=True, hf="LlamaForCausalLM"),
    "qwen2": dict(context=32768, eps=1e-6, rope_base=None, bos="<|end_of_text|>",
                  eos="<|im_end|>", add_bos=False, hf="Qwen2ForCausalLM"),
}


def write_gguf(path, arch, rng, *, pre, with_output=True, type_offset=0, overrides=None,
               alignment=None):
    meta = ARCH_META[arch]
    w = GGUFWriter(str(path), arch)
    w.add_name(f"gqa-serve gguf import test ({arch})")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_block_count(LAYERS)
    w.add_context_length(meta["context"])
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(meta["eps"])
    w.add_rope_dimension_count(HEAD_DIM)
    if meta["rope_base"] is not None:
        w.add_rope_freq_base(meta["rope_base"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types(TOKEN_TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(ID[meta["bos"]])
    w.add_eos_token_id(ID[meta["eos"]])
    w.add_add_bos_token(meta["add_bos"])
    w.add_chat_template(CHAT_TEMPLATE)
    types = {}
    matrices = norms = 0
    for name, shape in model_tensors(arch, with_output):
        if len(shape) == 1:
            qtype = NORM_TYPES[(norms + type_offset) % len(NORM_TYPES)]
            norms += 1
        else:
            qtype = SUPPORTED[(matrices + type_offset) % len(SUPPORTED)]
            matrices += 1
        qtype = (overrides or {}).get(name, qtype)
        types[name] = qtype
        w.add_tensor(name, raw_tensor(rng, qtype, shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_name(name):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


def expected_tensors(path, arch):
    """HF name -> (gguf name, type name, fp32 array in HF layout), from gguf's own reader."""
    out = {}
    for t in GGUFReader(str(path)).tensors:
        values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        assert values.shape == tuple(int(d) for d in reversed(t.shape)), t.name
        note = t.tensor_type.name
        if arch == "llama" and t.name.endswith("attn_q.weight"):
            values, note = unpermute(values, HEADS), note + ", unpermuted"
        elif arch == "llama" and t.name.endswith("attn_k.weight"):
            values, note = unpermute(values, KV_HEADS), note + ", unpermuted"
        out[hf_name(t.name)] = (t.name, note, np.ascontiguousarray(values))
    return out


# ---------------------------------------------------------------- reading the output


def read_safetensors(model_dir):
    """name -> (dtype, shape, raw bits as uint16/uint32, file name); duplicates are reported."""
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in tensors:
                check(False, f"{model_dir.name}: {name} stored in more than one shard")
            start, end = info["data_offsets"]
            bits = {"F32": np.uint32, "BF16": np.uint16,
                    "F16": np.uint16}.get(info["dtype"], np.uint8)
            tensors[name] = (info["dtype"], tuple(info["shape"]),
                             np.frombuffer(data[base + start:base + end], dtype=bits), path.name)
        with safe_open(str(path), framework="np") as f:  # the reference reader accepts the file
            if set(f.keys()) != {k for k in header if k != "__metadata__"}:
                check(False, f"{path.name}: safetensors lists the same tensors")
    return tensors


def to_bits(values, dtype):
    if dtype == "F32":
        return values.view(np.uint32).ravel()
    if dtype == "F16":
        return values.astype(np.float16).view(np.uint16).ravel()
    u = values.view(np.uint32).ravel().astype(np.uint64)  # bf16: round to nearest even
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bits_value(bits, dtype):
    if dtype == "F32":
        return float(np.array([bits], np.uint32).view(np.float32)[0])
    if dtype == "F16":
        return float(np.array([bits], np.uint16).view(np.float16)[0])
    return float(np.array([int(bits) << 16], np.uint32).view(np.float32)[0])


def compare_tensor(label, hf, got, want_values, dtype, note, verbose):
    if got is None:
        return check(False, f"{label}: {hf} ({note}) missing")
    got_dtype, got_shape, got_bits, _ = got
    if got_dtype != dtype or got_shape != want_values.shape:
        return check(False, f"{label}: {hf} ({note}) is {got_dtype} {list(got_shape)}, "
                            f"want {dtype} {list(want_values.shape)}")
    want_bits = to_bits(want_values, dtype)
    if got_bits.size != want_bits.size:
        return check(False, f"{label}: {hf} holds {got_bits.size} values, want {want_bits.size}")
    bad = np.flatnonzero(got_bits != want_bits)
    if bad.size:
        i = int(bad[0])
        index = tuple(int(x) for x in np.unravel_index(i, want_values.shape))
        return check(False, f"{label}: {hf} ({note}): {bad.size}/{want_bits.size} differ, first at "
                            f"{list(index)}: got {bits_value(got_bits[i], dtype)!r} "
                            f"(0x{int(got_bits[i]):x}), want {bits_value(want_bits[i], dtype)!r} "
                            f"(0x{int(want_bits[i]):x}); fp32 {float(want_values.flat[i])!r}")
    if verbose:
        check(True, f"{label}: {hf} ({note}) {list(got_shape)} {dtype} bitwise")
    return True


def check_weights(label, out, expected, dtype, verbose):
    tensors = read_safetensors(out)
    check(set(tensors) == set(expected),
          f"{label}: exactly the expected tensors ({len(tensors)}; missing "
          f"{sorted(set(expected) - set(tensors))}, extra {sorted(set(tensors) - set(expected))})")
    ok = True
    for hf, (_, note, values) in sorted(expected.items()):
        ok &= compare_tensor(label, hf, tensors.get(hf), values, dtype, note, verbose)
    if not verbose:
        check(ok, f"{label}: all {len(expected)} tensors bitwise as {dtype}")
    return tensors


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def leftovers(dst):
    return sorted(p.name for p in dst.parent.iterdir()
                  if p.name == dst.name or p.name.startswith(dst.name + ".partial"))


def import_gguf(args, label, src, dst, *flags):
    start = time.monotonic()
    result = run([args.convert, "--from-gguf", src, *flags, dst])
    elapsed = time.monotonic() - start
    ok = check(result.returncode == 0 and dst.is_dir(),
               f"{label}: imports ({elapsed:.2f} s) {result.stderr.strip()}")
    partial = [n for n in leftovers(dst) if n != dst.name]
    check(not partial, f"{label}: no partial directory left ({partial})")
    if ok:
        files = {p.name for p in dst.iterdir()}
        weights = ({"model.safetensors"} if "model.safetensors" in files
                   else {"model.safetensors.index.json"})
        need = {"config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json"} | weights
        check(need <= files, f"{label}: writes {sorted(need)} (has {sorted(files)})")
    return ok


# ---------------------------------------------------------------- checks


def check_config(label, out, arch, dtype, tied):
    meta = ARCH_META[arch]
    config = json.loads((out / "config.json").read_text())
    want = {"architectures": [meta["hf"]], "model_type": arch, "hidden_size": HIDDEN,
            "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "max_position_embeddings": meta["context"],
            "rope_theta": meta["rope_base"] or 10000.0, "vocab_size": VOCAB, "torch_dtype": dtype,
            "bos_token_id": ID[meta["bos"]], "eos_token_id": ID[meta["eos"]],
            "tie_word_embeddings": tied}
    def same(got, value):  # booleans must be JSON booleans, numbers must not be
        return got is value if isinstance(value, bool) else \
            (not isinstance(got, bool) and got == value)
    wrong = {k: config.get(k, "(absent)") for k, v in want.items()
             if k not in config or not same(config[k], v)}
    check(not wrong, f"{label}: config.json values (wrong: {wrong})")
    eps = float(str(np.float32(meta["eps"])))  # shortest decimal that rounds to the float32
    check(config.get("rms_norm_eps") == eps,
          f"{label}: rms_norm_eps {config.get('rms_norm_eps')!r} == {eps!r}")
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen.get("eos_token_id")
    check(eos == ID[meta["eos"]] or eos == [ID[meta["eos"]]],
          f"{label}: generation_config.json eos_token_id {eos}")


def token_content(value):
    return value.get("content") if isinstance(value, dict) else value


def check_tokenizer(label, out, pre, arch):
    meta = ARCH_META[arch]
    tc = json.loads((out / "tokenizer_config.json").read_text())
    check(tc.get("add_bos_token") is meta["add_bos"] and
          token_content(tc.get("bos_token")) == meta["bos"] and
          token_content(tc.get("eos_token")) == meta["eos"] and
          tc.get("chat_template") == CHAT_TEMPLATE,
          f"{label}: tokenizer_config.json add_bos_token {tc.get('add_bos_token')}, bos "
          f"{token_content(tc.get('bos_token'))!r}, eos {token_content(tc.get('eos_token'))!r}, "
          f"chat_template {'equal' if tc.get('chat_template') == CHAT_TEMPLATE else 'differs'}")
    doc = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    model = doc.get("model") or {}
    check(model.get("type") == "BPE" and model.get("vocab") == ID,
          f"{label}: tokenizer.json BPE vocab = the {VOCAB} tokens in order")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    check(merges == MERGES, f"{label}: tokenizer.json merges in order")
    added = sorted((a.get("id"), a.get("content"), a.get("special"))
                   for a in doc.get("added_tokens", []))
    want_added = sorted([(ID[t], t, True) for t in CONTROL] +
                        [(ID[t], t, False) for t in USER_DEFINED])
    check(added == want_added,
          f"{label}: added_tokens = control (special) + user-defined ({added})")
    try:
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        check(False, f"{label}: tokenizers loads tokenizer.json ({e})")
        return
    ref = reference_tokenizer(pre)
    ref_pre = reference_pre_tokenizer(pre)
    bad_pre = []
    for text in PROBES:
        normalized = ref.normalizer.normalize_str(text) if ref.normalizer else text
        ours = ([p for p, _ in tok.pre_tokenizer.pre_tokenize_str(normalized)]
                if tok.pre_tokenizer else None)
        want = [p for p, _ in ref_pre.pre_tokenize_str(normalized)]
        if ours != want:
            bad_pre.append((text, ours, want))
    check(not bad_pre, f"{label}: pre-tokenizes like {pre}'s reference"
                       + (f" (first: {bad_pre[0]})" if bad_pre else ""))
    if pre == "qwen2":
        got = tok.normalizer.normalize_str("e\u0301") if tok.normalizer else None
        check(got == "\u00e9", f"{label}: NFC normalizer ({got!r})")
    bad_ids = []
    for text in PROBES:
        ours = tok.encode(text, add_special_tokens=False).ids
        want = ref.encode(text, add_special_tokens=False).ids
        if ours != want:
            bad_ids.append((text, ours, want))
    check(not bad_ids, f"{label}: encodes {len(PROBES)} probes like the reference"
                       + (f" (first: {bad_ids[0]})" if bad_ids else ""))
    expect = {"hello world": [ID["hello"], ID["Ġworld"]],
              "<|im_start|>hello<|im_end|>": [ID["<|im_start|>"], ID["hello"], ID["<|im_end|>"]],
              "x<tool_call>": [ID["x"], ID["<tool_call>"]],
              "é": [ID[BYTE_CHARS[0xC3]], ID[BYTE_CHARS[0xA9]]],
              "123": [ID["123"]] if pre in ("llama-bpe", "gpt-2", "default") else
                     [ID["1"], ID["2"], ID["3"]]}
    got = {text: tok.encode(text, add_special_tokens=False).ids for text in expect}
    check(got == expect, f"{label}: merged, special, user-defined and byte tokens ({got})")
    plain = [t for t in PROBES if not any(s in t for s in CONTROL + USER_DEFINED)]
    if pre == "qwen2":
        plain = [t for t in plain if t == normalizers.NFC().normalize_str(t)]
    bad_trip = [t for t in plain if tok.decode(tok.encode(t, add_special_tokens=False).ids) != t]
    check(not bad_trip, f"{label}: decode(encode(text)) == text (ByteLevel decoder) {bad_trip[:1]}")


def check_main(args, work, rng, arch):
    src = work / f"{arch}.gguf"
    with_output = arch == "llama"
    types = write_gguf(src, arch, rng, pre="llama-bpe" if arch == "llama" else "qwen2",
                       with_output=with_output, type_offset=0 if arch == "llama" else 5)
    used = set(types.values())
    check(set(SUPPORTED) <= used, f"{arch}: the file has every supported type "
                                  f"({len(used)} types over {len(types)} tensors)")
    expected = expected_tensors(src, arch)
    pre = "llama-bpe" if arch == "llama" else "qwen2"
    out = work / f"{arch}-f32"
    if import_gguf(args, f"{arch} f32", src, out, "--dtype", "float32"):
        check_config(f"{arch} f32", out, arch, "float32", tied=not with_output)
        tensors = check_weights(f"{arch} f32", out, expected, "F32", verbose=True)
        if with_output:
            check("lm_head.weight" in tensors,
                  f"{arch}: output.weight present -> lm_head.weight, tie_word_embeddings false")
        else:
            check("lm_head.weight" not in tensors,
                  f"{arch}: no output.weight -> no lm_head.weight, tie_word_embeddings true")
        check_tokenizer(f"{arch} ({pre})", out, pre, arch)
    # bfloat16: the default for llama, spelled out for qwen2.
    out = work / f"{arch}-bf16"
    flags = [] if arch == "llama" else ["--dtype", "bfloat16"]
    if import_gguf(args, f"{arch} bf16 ({'default' if not flags else '--dtype bfloat16'})",
                   src, out, *flags):
        check_weights(f"{arch} bf16", out, expected, "BF16", verbose=False)
        check_config(f"{arch} bf16", out, arch, "bfloat16", tied=not with_output)
    if arch == "llama":
        out = work / f"{arch}-f16"
        if import_gguf(args, f"{arch} f16", src, out, "--dtype", "float16"):
            check_weights(f"{arch} f16", out, expected, "F16", verbose=False)
            check_config(f"{arch} f16", out, arch, "float16", tied=False)
        out = work / f"{arch}-sharded"
        if import_gguf(args, f"{arch} f32 sharded", src, out, "--dtype", "float32",
                       "--max-shard-size", "1000000"):
            tensors = check_weights(f"{arch} f32 sharded", out, expected, "F32", verbose=False)
            files = sorted(p.name for p in out.glob("*.safetensors"))
            index_path = out / "model.safetensors.index.json"
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            weight_map = index.get("weight_map", {})
            check(len(files) > 1 and "model.safetensors" not in files and
                  weight_map == {n: t[3] for n, t in tensors.items()},
                  f"{arch} sharded: {len(files)} shards, the index maps every tensor to its shard")


def check_variants(args, work, rng):
    """Every other tokenizer.ggml.pre value; tied llama embeddings; a 64-byte data alignment."""
    for pre, arch, with_output, alignment in (("smollm", "llama", False, None),
                                              ("gpt-2", "llama", True, 64),
                                              ("default", "qwen2", True, None)):
        label = f"{arch} pre={pre}" + (f" alignment {alignment}" if alignment else "") + \
                ("" if with_output else " tied")
        src = work / f"{arch}-{pre}.gguf"
        write_gguf(src, arch, rng, pre=pre, with_output=with_output, type_offset=3,
                   alignment=alignment)
        out = work / f"{arch}-{pre}"
        if import_gguf(args, label, src, out, "--dtype", "float32"):
            tensors = check_weights(label, out, expected_tensors(src, arch), "F32", verbose=False)
            config = json.loads((out / "config.json").read_text())
            check(config.get("tie_word_embeddings") is (not with_output) and
                  ("lm_head.weight" in tensors) == with_output,
                  f"{label}: tie_word_embeddings {config.get('tie_word_embeddings')}, "
                  f"lm_head.weight {'present' if 'lm_head.weight' in tensors else 'absent'}")
            check_tokenizer(label, out, pre, arch)


def check_refusals(args, work, rng):
    def refused(src, what, expect=(), dst=None):
        dst = dst or work / "refused-out"
        result = run([args.convert, "--from-gguf", src, "--dtype", "float32", dst])
        lines = result.stderr.strip().splitlines()
        left = leftovers(dst)
        line = lines[0] if lines else "(no message)"
        check(result.returncode == 1 and len(lines) == 1 and line.startswith("gqa-convert: ") and
              all(any(e in line for e in alternatives) for alternatives in expect) and not left,
              f"refuses {what}: exit {result.returncode}, {len(lines)} line(s): {line}"
              + (f"; left behind {left}" if left else ""))

    for qtype, name in ((T.Q8_1, "blk.1.ffn_up.weight"), (T.IQ3_S, "blk.0.attn_k.weight"),
                        (T.IQ2_XXS, "output.weight"), (T.IQ4_NL, "token_embd.weight")):
        src = work / f"refuse-{qtype.name}.gguf"
        write_gguf(src, "llama", rng, pre="llama-bpe", overrides={name: qtype})
        refused(src, f"{qtype.name} in {name}", expect=[(qtype.name,), (name, hf_name(name))])

    good = work / "llama.gguf"
    data = good.read_bytes()
    truncated = work / "truncated-data.gguf"
    truncated.write_bytes(data[:-1000])
    refused(truncated, "a file truncated in its tensor data")
    truncated = work / "truncated-meta.gguf"
    truncated.write_bytes(data[:200])
    refused(truncated, "a file truncated in its metadata")
    bad_magic = work / "bad-magic.gguf"
    bad_magic.write_bytes(b"GGUX" + data[4:])
    refused(bad_magic, "a bad magic")
    refused(work / "missing.gguf", "a missing file")
    unknown_pre = work / "unknown-pre.gguf"
    write_gguf(unknown_pre, "llama", rng, pre="gqa-test-unknown-pre")
    refused(unknown_pre, "an unknown tokenizer.ggml.pre", expect=[("gqa-test-unknown-pre",)])

    existing = work / "existing-out"
    existing.mkdir()
    (existing / "marker").write_text("keep")
    result = run([args.convert, "--from-gguf", good, existing])
    lines = result.stderr.strip().splitlines()
    check(result.returncode == 1 and len(lines) == 1 and lines[0].startswith("gqa-convert: ") and
          [p.name for p in existing.iterdir()] == ["marker"] and
          (existing / "marker").read_text() == "keep" and leftovers(existing) == ["existing-out"],
          f"refuses an existing destination and leaves it alone: {lines[0] if lines else ''}")


def self_check():
    x = np.arange(HIDDEN * 8, dtype=np.float32).reshape(HIDDEN, 8)
    ok = (np.array_equal(unpermute(permute(x, HEADS), HEADS), x) and
          np.array_equal(permute(unpermute(x, KV_HEADS), KV_HEADS), x) and
          not np.array_equal(unpermute(x, HEADS), x))
    ties = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF], np.uint32).view(np.float32)
    ok &= list(to_bits(ties, "BF16")) == [0x3F80, 0x3F82, 0x3F81]
    ok &= len(set(TOKENS)) == VOCAB
    check(ok, "test self-check: permutation inverse, bf16 rounding, distinct tokens")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--convert", required=True)
    args = parser.parse_args()
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    self_check()
    usage = run([args.convert])
    if not check("--from-gguf" in usage.stdout + usage.stderr,
                 f"gqa-convert knows --from-gguf ({(usage.stdout + usage.stderr).strip()})"):
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        sections = (("llama", lambda: check_main(args, work, rng, "llama")),
                    ("qwen2", lambda: check_main(args, work, rng, "qwen2")),
                    ("variants", lambda: check_variants(args, work, rng)),
                    ("refusals", lambda: check_refusals(args, work, rng)))
        for name, section in sections:
            try:
                section()
            except Exception as e:  # noqa: BLE001 - record it and go on with the next section
                traceback.print_exc()
                check(False, f"{name}: the test raised {type(e).__name__}: {e}")
    print(f"{time.monotonic() - start:.1f} s")
    if FAILURES:
        print(f"{len(FAILURES)} FAILED")
        return 1
    print("all GGUF import checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
