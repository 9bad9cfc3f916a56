#!/usr/bin/env python3
"""The PyTorch peer for gqa-bench kernels: decode attention through
torch.nn.functional.scaled_dot_product_attention on contiguous K/V, with enable_gqa=True and with
K/V repeated per query head (the naive path). Arguments: "kv_heads,batch,context" triples, after
an optional "--head_dim N" (default 128) and "--prefill".
Prints "kv batch context sdpa_eager sdpa_graph naive_eager naive_graph" per shape, in
microseconds per call: eager is the median of 200 single calls between CUDA events; graph is
20 calls captured in a CUDA graph and replayed (median of 30). Inputs rotate past L2 like the
C++ side."""
import math
import sys

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 32, 128
ROTATE_BYTES = 512 << 20


def median_us(fn, copies):
    for i in range(10):
        fn(i % copies)
    torch.cuda.synchronize()
    times = []
    for i in range(200):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % copies)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    times.sort()
    return times[len(times) // 2]


def graph_us(fn, copies, calls=20):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fn(i % copies)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % copies)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3 / calls)
    times.sort()
    return times[len(times) // 2]


def measure(kv, batch, context):
    group = HEADS // kv
    kv_bytes = 2 * batch * kv * context * HEAD_DIM * 2
    copies = int(min(64, max(1, math.ceil(ROTATE_BYTES / kv_bytes))))
    dev, dt = "cuda", torch.bfloat16
    qs = [torch.randn(batch, HEADS, 1, HEAD_DIM, device=dev, dtype=dt) for _ in range(copies)]
    ks = [torch.randn(batch, kv, context, HEAD_DIM, device=dev, dtype=dt) for _ in range(copies)]
    vs = [torch.randn(batch, kv, context, HEAD_DIM, device=dev, dtype=dt) for _ in range(copies)]
    def gqa(c):
        return F.scaled_dot_product_attention(qs[c], ks[c], vs[c], enable_gqa=True)

    sdpa = (median_us(gqa, copies), graph_us(gqa, copies))

    def naive(c):
        k = ks[c].repeat_interleave(group, dim=1)
        v = vs[c].repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(qs[c], k, v)

    fits = kv_bytes * group * 3 <= (48 << 30)  # the repeated K/V of the graph's calls
    naive_times = (median_us(naive, copies), graph_us(naive, copies)) if fits else (math.nan,) * 2
    del qs, ks, vs
    torch.cuda.empty_cache()
    return sdpa, naive_times


def measure_prefill(kv, batch, length):
    """Causal SDPA over one prompt per sequence (eager median, us)."""
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch, HEADS, length, HEAD_DIM, device=dev, dtype=dt)
    k = torch.randn(batch, kv, length, HEAD_DIM, device=dev, dtype=dt)
    v = torch.randn(batch, kv, length, HEAD_DIM, device=dev, dtype=dt)
    return median_us(lambda c: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                              enable_gqa=True), 1)


def main():
    global HEAD_DIM
    args = sys.argv[1:]
    if args[:1] == ["--head_dim"]:
        HEAD_DIM = int(args[1])
        args = args[2:]
    if args[:1] == ["--prefill"]:
        for arg in args[1:]:
            kv, batch, length = map(int, arg.split(","))
            print(f"{kv} {batch} {length} {measure_prefill(kv, batch, length):.2f}", flush=True)
        return
    for arg in args:
        kv, batch, context = map(int, arg.split(","))
        sdpa, naive = measure(kv, batch, context)
        print(f"{kv} {batch} {context} {sdpa[0]:.2f} {sdpa[1]:.2f} {naive[0]:.2f} {naive[1]:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
