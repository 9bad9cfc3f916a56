#!/usr/bin/env python3
"""The PyTorch peer for `gqa-bench decode`: whole-model decode steps (and prompt prefill) of a
Llama-family decoder with random bf16 weights, in the gpt-fast recipe.

Recipe:
  * Weights: fused QKV ([q + 2 kv, hidden], one matmul), output projection, fused gate|up
    ([2 ffn, hidden], one matmul), down projection, RMSNorm weights (fp32 reduction as in Hugging
    Face's LlamaRMSNorm), embedding and lm_head (tied for "1b", as Llama 3.2 1B). Rotate-half RoPE
    (theta 500000; 10000 for "7b") with cos/sin computed from the position tensor inside the step.
  * KV cache: static, preallocated, one [batch, kv_heads, ctx, head_dim] K and V tensor per
    layer, filled with random values. A decode step for context CTX is the query at position
    CTX - 1: it writes its K/V into slot CTX - 1 (index_copy_ at a device-side position tensor)
    and attends to all CTX slots, so it reads the K/V of exactly CTX tokens per sequence per
    layer, with no mask (which keeps SDPA on its flash kernel).
  * Attention: F.scaled_dot_product_attention(..., enable_gqa=True) (torch >= 2.5); K/V
    repeat_interleave'd per query head where enable_gqa is not accepted; an explicit softmax
    where SDPA does not exist (torch < 2.0, CPU tests only). SwiGLU MLP, residuals, final norm,
    lm_head and greedy argmax, fed back as the next step's tokens.
  * Decode: the step is torch.compile'd (mode "max-autotune-no-cudagraphs", dynamic=False,
    fullgraph=True, coordinate-descent tuning as gpt-fast) unless --no-compile, then captured
    in ONE torch.cuda.CUDAGraph and replayed; if compiling raises, a note goes to stderr and the
    eager step is captured instead. Time: median of 100 replays, each between CUDA events, after
    10 warm-up replays. Per step it moves every weight once (plus `batch` embedding rows) and
    the K/V of CTX tokens per sequence per layer.
  * Prefill: one prompt of LEN tokens (batch 1) through the whole model with causal SDPA, K/V
    written into a LEN-slot cache, logits of the last token only; compiled (as above, no CUDA
    graph) and eager, median of 20 runs between CUDA events after 3 warm-ups.
  * --device cpu (tests): no CUDA graphs or events; time.perf_counter medians.

Usage:
  decode_peer.py [--no-compile] [--device cuda] decode MODEL:KV:BATCH:CTX [...]
  decode_peer.py [--no-compile] [--device cuda] prefill MODEL:KV:LEN [...]
MODEL: "1b" (16 layers, hidden 2048, 32 heads x 64, FFN 8192, vocab 128256), "8b" (32 layers,
hidden 4096, 32 heads x 128, FFN 14336, vocab 128256), "7b" (Llama-2-7B: 32 layers, hidden
4096, 32 heads x 128, FFN 11008, vocab 32000, untied) or "tiny" (tests: 2 layers, hidden 128,
4 heads x 32, FFN 256, vocab 512); KV: number of KV heads (divides the query heads).

Output (stdout, one line per shape; everything else goes to stderr):
  decode MODEL KV BATCH CTX ms_per_step            ("nan" where the shape does not fit)
  prefill MODEL KV LEN tokens_per_s                (compiled, or eager where compiling failed)
  prefill-eager MODEL KV LEN tokens_per_s
Models are built once per (MODEL, KV), in the order they first appear, and reused for all of
their shapes; lines come out in that grouping.
"""
import argparse
import gc
import importlib
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

MODELS = {
    "tiny": dict(layers=2, hidden=128, heads=4, head_dim=32, ffn=256, vocab=512, tied=False),
    "1b": dict(layers=16, hidden=2048, heads=32, head_dim=64, ffn=8192, vocab=128256, tied=True),
    "8b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=14336, vocab=128256,
               tied=False),
    "7b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=11008, vocab=32000,
               tied=False, theta=10000.0),
}
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DECODE_WARMUP, DECODE_ITERS = 10, 100
PREFILL_WARMUP, PREFILL_ITERS = 3, 20
CPU_DECODE_ITERS = 50


def note(msg):
    print(f"decode_peer: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- attention

def _probe_attention(device, dtype):
    """Which attention this torch has: "gqa" (SDPA with enable_gqa), "repeat" (SDPA on K/V
    repeated per query head) or "math" (no SDPA at all)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return "math"
    q = torch.randn(1, 4, 2, 32, device=device, dtype=dtype)
    kv = torch.randn(1, 2, 2, 32, device=device, dtype=dtype)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return "gqa"
    except TypeError:
        return "repeat"


def _math_attention(q, k, v, causal):
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        t, s = q.shape[-2], k.shape[-2]
        keep = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype)


def attention(mode, q, k, v, causal):
    """q [B, H, T, D], k/v [B, KV, S, D] -> [B, H, T, D]."""
    if mode == "gqa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    if mode == "repeat":
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return _math_attention(q, k, v, causal)


# -------------------------------------------------------------------------------------- model

def rms_norm(x, weight):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return weight * xf.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Layer(torch.nn.Module):
    def __init__(self, cfg, kv_heads, device, dtype):
        super().__init__()
        hidden, hd, ffn = cfg["hidden"], cfg["head_dim"], cfg["ffn"]
        qkv_rows = (cfg["heads"] + 2 * kv_heads) * hd

        def weight(rows, cols):
            w = torch.empty(rows, cols, device=device, dtype=dtype)
            return torch.nn.Parameter(w.normal_(0.0, 0.02), requires_grad=False)

        def norm():
            return torch.nn.Parameter(torch.ones(hidden, device=device, dtype=dtype),
                                      requires_grad=False)

        self.attn_norm = norm()
        self.wqkv = weight(qkv_rows, hidden)             # [q | k | v] rows
        self.wo = weight(hidden, cfg["heads"] * hd)
        self.ffn_norm = norm()
        self.w13 = weight(2 * ffn, hidden)               # [gate | up] rows
        self.w2 = weight(hidden, ffn)


class Model(torch.nn.Module):
    def __init__(self, name, kv_heads, device, dtype):
        super().__init__()
        cfg = MODELS[name]
        if cfg["heads"] % kv_heads:
            raise ValueError(f"{name}: {kv_heads} KV heads do not divide {cfg['heads']} heads")
        self.name, self.cfg, self.kv_heads = name, cfg, kv_heads
        self.device, self.dtype = torch.device(device), dtype
        self.heads, self.head_dim = cfg["heads"], cfg["head_dim"]
        self.attn_mode = _probe_attention(device, dtype)
        torch.manual_seed(0)  # also seeds every CUDA device
        hidden, vocab = cfg["hidden"], cfg["vocab"]
        emb = torch.empty(vocab, hidden, device=device, dtype=dtype).normal_(0.0, 1.0)
        self.embed = torch.nn.Parameter(emb, requires_grad=False)
        self.layers = torch.nn.ModuleList(
            Layer(cfg, kv_heads, device, dtype) for _ in range(cfg["layers"]))
        self.norm = torch.nn.Parameter(torch.ones(hidden, device=device, dtype=dtype),
                                       requires_grad=False)
        if cfg["tied"]:
            self.lm_head = self.embed
        else:
            head = torch.empty(vocab, hidden, device=device, dtype=dtype).normal_(0.0, 0.02)
            self.lm_head = torch.nn.Parameter(head, requires_grad=False)
        theta = cfg.get("theta", ROPE_THETA)
        inv = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                           device=device) / self.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def new_cache(self, batch, length, fill_random=True):
        """One (K, V) pair of [batch, kv_heads, length, head_dim] per layer, flattened."""
        shape = (batch, self.kv_heads, length, self.head_dim)
        caches = []
        for _ in range(2 * len(self.layers)):
            t = torch.empty(shape, device=self.device, dtype=self.dtype)
            caches.append(t.normal_(0.0, 1.0) if fill_random else t.zero_())
        return caches

    def forward(self, tokens, pos, caches, prefill: bool):
        """tokens [B, T] int64, pos [T] int64 (the cache slots they take), caches from
        new_cache. Decode (prefill=False) attends to every slot of the cache; prefill
        (T == cache length) attends causally. Returns (greedy next tokens [B], logits [B, V])
        for the last position."""
        b, t = tokens.shape
        h, kvh, hd = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = h * hd, kvh * hd
        x = F.embedding(tokens, self.embed)                          # [B, T, hidden]
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)                      # [T, hd]
        cos = emb.cos().to(self.dtype)[None, :, None, :]
        sin = emb.sin().to(self.dtype)[None, :, None, :]
        for i, layer in enumerate(self.layers):
            k_cache, v_cache = caches[2 * i], caches[2 * i + 1]
            qkv = F.linear(rms_norm(x, layer.attn_norm), layer.wqkv)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = q.view(b, t, h, hd)
            k = k.view(b, t, kvh, hd)
            v = v.view(b, t, kvh, hd)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            k_cache.index_copy_(2, pos, k)
            v_cache.index_copy_(2, pos, v)
            o = attention(self.attn_mode, q, k_cache, v_cache, causal=prefill)
            o = o.transpose(1, 2).reshape(b, t, q_size)
            x = x + F.linear(o, layer.wo)
            gate, up = F.linear(rms_norm(x, layer.ffn_norm), layer.w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.w2)
        x = rms_norm(x[:, -1, :], self.norm)                        # [B, hidden]
        logits = F.linear(x, self.lm_head)                           # [B, vocab]
        return logits.argmax(dim=-1), logits


# ------------------------------------------------------------------------------------ compile

class Compiler:
    """torch.compile of Model.forward, turned off for good after the first failure."""

    def __init__(self, enabled, mode):
        self.enabled, self.mode = enabled, mode
        if enabled and not hasattr(torch, "compile"):
            note(f"torch {torch.__version__} has no torch.compile: running eager")
            self.enabled = False
        if self.enabled:
            try:
                dyn = importlib.import_module("torch._dynamo").config
                inductor = importlib.import_module("torch._inductor.config")
                for key in ("recompile_limit", "cache_size_limit"):
                    if hasattr(dyn, key):
                        setattr(dyn, key, 1024)
                inductor.coordinate_descent_tuning = True
                inductor.triton.unique_kernel_names = True
                if hasattr(inductor, "fx_graph_cache"):
                    inductor.fx_graph_cache = True
            except Exception as e:  # noqa: BLE001 - configuration is best effort
                note(f"could not configure dynamo/inductor ({type(e).__name__}: {e})")

    def wrap(self, model):
        if not self.enabled:
            return model.forward
        try:
            return torch.compile(model.forward, mode=self.mode, dynamic=False, fullgraph=True)
        except Exception as e:  # noqa: BLE001
            self.fail(e)
            return model.forward

    def fail(self, e):
        note(f"torch.compile failed, falling back to eager ({type(e).__name__}: "
             f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''})")
        self.enabled = False

    def reset(self):
        if hasattr(torch, "_dynamo"):
            try:
                torch._dynamo.reset()
            except Exception:  # noqa: BLE001
                pass


def is_oom(e):
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return isinstance(e, oom_types) or "out of memory" in str(e).lower()


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def first_call(compiler, fn, model, call):
    """Runs call(fn) once (compiling it). If compiling raises anything but OOM, turns compile
    off and returns the eager forward (after running it once); OOM propagates."""
    try:
        call(fn)
        return fn
    except Exception as e:  # noqa: BLE001
        if is_oom(e) or fn == model.forward:
            raise
        compiler.fail(e)
        compiler.reset()
        free_memory(model.device)
        call(model.forward)
        return model.forward


# ------------------------------------------------------------------------------------- decode

def fits(model, batch, ctx):
    """Rough check that the caches and the step's temporaries fit in free GPU memory."""
    if model.device.type != "cuda":
        return True
    cfg, elt = model.cfg, torch.finfo(model.dtype).bits // 8
    cache = 2 * cfg["layers"] * batch * model.kv_heads * ctx * model.head_dim * elt
    temps = batch * (4 * cfg["ffn"] + 8 * cfg["hidden"] + 6 * cfg["vocab"]) * 4
    free, _ = torch.cuda.mem_get_info(model.device)
    return cache + temps + (1 << 30) < free


def measure_decode(model, compiler, batch, ctx):
    dev = model.device
    if not fits(model, batch, ctx):
        note(f"{model.name}:{model.kv_heads}:{batch}:{ctx} does not fit in free memory")
        return math.nan
    caches = model.new_cache(batch, ctx)
    gen = torch.Generator(device=dev).manual_seed(1)
    tokens = torch.randint(0, model.cfg["vocab"], (batch, 1), device=dev, generator=gen)
    pos = torch.tensor([ctx - 1], device=dev, dtype=torch.long)
    fn = compiler.wrap(model)

    def step(f):
        nxt, _ = f(tokens, pos, caches, False)
        tokens.copy_(nxt.view(batch, 1))

    if dev.type != "cuda":
        fn = first_call(compiler, fn, model, step)
        for _ in range(3):
            step(fn)
        times = []
        for _ in range(CPU_DECODE_ITERS):
            t0 = time.perf_counter()
            step(fn)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        fn = first_call(compiler, fn, model, step)
        for _ in range(3):
            step(fn)
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step(fn)
        for _ in range(DECODE_WARMUP):
            graph.replay()
        torch.cuda.synchronize(dev)
        times = []
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        for _ in range(DECODE_ITERS):
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)
    finally:
        del graph


# ------------------------------------------------------------------------------------ prefill

def time_prefill(model, fn, length, caches, tokens, pos):
    def run(f):
        f(tokens, pos, caches, True)

    dev = model.device
    for _ in range(PREFILL_WARMUP):
        run(fn)
    times = []
    if dev.type != "cuda":
        for _ in range(PREFILL_ITERS):
            t0 = time.perf_counter()
            run(fn)
            times.append(time.perf_counter() - t0)
    else:
        torch.cuda.synchronize(dev)
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        for _ in range(PREFILL_ITERS):
            start.record()
            run(fn)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    return length / statistics.median(times)


def measure_prefill(model, compiler, length):
    """(compiled tokens/s or None where compile is off, eager tokens/s)."""
    dev = model.device
    if not fits(model, 1, length) or (dev.type == "cuda" and not fits(model, length, 1)):
        note(f"prefill {model.name}:{model.kv_heads}:{length} does not fit in free memory")
        return math.nan, math.nan
    caches = model.new_cache(1, length)
    gen = torch.Generator(device=dev).manual_seed(2)
    tokens = torch.randint(0, model.cfg["vocab"], (1, length), device=dev, generator=gen)
    pos = torch.arange(length, device=dev, dtype=torch.long)
    compiled = None
    if compiler.enabled:
        fn = compiler.wrap(model)
        fn = first_call(compiler, fn, model, lambda f: f(tokens, pos, caches, True))
        if fn != model.forward:
            compiled = time_prefill(model, fn, length, caches, tokens, pos)
    eager = time_prefill(model, model.forward, length, caches, tokens, pos)
    return compiled, eager


# --------------------------------------------------------------------------------------- main

def parse_shapes(kind, args):
    fields = 4 if kind == "decode" else 3
    shapes = []
    for arg in args:
        parts = arg.split(":")
        if len(parts) != fields or parts[0] not in MODELS:
            sys.exit(f"decode_peer: bad {kind} shape {arg!r} (want MODEL:KV:"
                     f"{'BATCH:CTX' if kind == 'decode' else 'LEN'}, MODEL in "
                     f"{', '.join(MODELS)})")
        try:
            nums = tuple(int(p) for p in parts[1:])
        except ValueError:
            nums = (0,)
        if min(nums) < 1:
            sys.exit(f"decode_peer: bad {kind} shape {arg!r} (fields must be positive integers)")
        if MODELS[parts[0]]["heads"] % nums[0]:
            sys.exit(f"decode_peer: bad {kind} shape {arg!r} ({nums[0]} KV heads do not divide "
                     f"{MODELS[parts[0]]['heads']} query heads)")
        shapes.append((parts[0],) + nums)
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-compile", action="store_true", help="eager (+ CUDA graph for decode)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode, one that makes no CUDA graphs itself "
                         "(default %(default)s)")
    ap.add_argument("kind", choices=["decode", "prefill"])
    ap.add_argument("shapes", nargs="+")
    args = ap.parse_args()
    if args.compile_mode == "reduce-overhead":
        sys.exit("decode_peer: --compile-mode reduce-overhead would nest CUDA graphs; use "
                 "max-autotune-no-cudagraphs or default")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("decode_peer: CUDA is not available (use --device cpu for the tiny tests)")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    dtype = DTYPES[args.dtype]
    shapes = parse_shapes(args.kind, args.shapes)
    compiler = Compiler(not args.no_compile, args.compile_mode)
    note(f"torch {torch.__version__}, device {device}, dtype {args.dtype}, compile "
         f"{args.compile_mode if compiler.enabled else 'off'}")

    groups = {}
    for s in shapes:
        groups.setdefault(s[:2], []).append(s)
    torch.set_grad_enabled(False)
    for (name, kv), group in groups.items():
        model = None
        try:
            model = Model(name, kv, device, dtype)
            note(f"built {name} with {kv} KV heads (attention: {model.attn_mode})")
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            note(f"cannot build {name}:{kv}: {e}")
        for shape in group:
            key = " ".join(str(f) for f in shape)
            if args.kind == "decode":
                ms = math.nan
                if model is not None:
                    try:
                        ms = measure_decode(model, compiler, shape[2], shape[3])
                    except Exception as e:  # noqa: BLE001
                        if not is_oom(e):
                            raise
                        note(f"decode {key}: out of memory")
                free_memory(device)
                print(f"decode {key} {ms:.4f}", flush=True)
            else:
                compiled, eager = math.nan, math.nan
                if model is not None:
                    try:
                        compiled, eager = measure_prefill(model, compiler, shape[2])
                    except Exception as e:  # noqa: BLE001
                        if not is_oom(e):
                            raise
                        note(f"prefill {key}: out of memory")
                free_memory(device)
                print(f"prefill {key} {eager if compiled is None else compiled:.1f}", flush=True)
                print(f"prefill-eager {key} {eager:.1f}", flush=True)
        del model
        compiler.reset()
        free_memory(device)


if __name__ == "__main__":
    main()
