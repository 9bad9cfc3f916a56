#!/usr/bin/env python3
"""Time to first token of one long prompt through gqa-server over gRPC (issue 17's 127,000-token
prompt on the Llama-2-7B shape): the model is a config.json of sweep.py's SHAPES served with
--load_format dummy (random weights), one request at a time, its KV pool sized to the prompt
(times --pool_factor), so the shape's whole cache fits the GPU and nothing else does. gqa-loadgen
sends --warmup_requests, then --num_requests measured ones, and writes its JSON report; this
prints one line per chunk size with the TTFT and the prefill rate.

Usage (the issue's measurement; an 80 GB H100 fits it at --pool_factor 1.0):
  client/bench/long_prompt.py --server build-cuda/server/gqa-server \\
      --loadgen build-cuda/client/gqa-loadgen --chunks 2048,16384 --out /tmp/long
Anything after `--` goes to gqa-server (e.g. -- --kv_cache_dtype fp8_e4m3)."""
import argparse
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dummy_server import DummyServer  # noqa: E402
from sweep import kv_bytes_per_token, model_config  # noqa: E402


def pool_mib(shape, kv_heads, max_model_len, factor, kv_element_bytes, block_size=16):
    """MiB for a pool of max_model_len tokens (rounded up to a block, plus one block) times
    factor."""
    tokens = (math.ceil(max_model_len / block_size) + 1) * block_size
    return math.ceil(tokens * kv_bytes_per_token(shape, kv_heads, kv_element_bytes) * factor /
                     (1 << 20))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="build-cuda/server/gqa-server")
    ap.add_argument("--loadgen", default="build-cuda/client/gqa-loadgen")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--kv_heads", type=int, default=32)
    ap.add_argument("--input_len", type=int, default=127000)
    ap.add_argument("--output_len", type=int, default=4)
    ap.add_argument("--chunks", default="2048",
                    help="comma-separated --max_num_batched_tokens values, one server each")
    ap.add_argument("--pool_factor", type=float, default=1.0)
    ap.add_argument("--warmup_requests", type=int, default=1)
    ap.add_argument("--num_requests", type=int, default=2)
    ap.add_argument("--timeout_s", type=int, default=900)
    ap.add_argument("--out", required=True)
    args, server_flags = ap.parse_known_args(argv)
    if server_flags[:1] == ["--"]:
        server_flags = server_flags[1:]
    return args, server_flags


def run_chunk(args, server_flags, chunk):
    max_len = args.input_len + args.output_len + 16
    elt = 1 if "--kv_cache_dtype=fp8_e4m3" in server_flags or (
        "fp8_e4m3" in server_flags) else 2
    mib = pool_mib(args.shape, args.kv_heads, max_len, args.pool_factor, elt)
    flags = ["--backend", args.backend, "--max_model_len", str(max_len), "--max_num_seqs", "1",
             "--kv_cache_memory", f"{mib}MiB", "--max_num_batched_tokens", str(chunk),
             *server_flags]
    report = os.path.join(args.out, f"long_{chunk}.json")
    config = model_config(args.shape, args.kv_heads, max_len)
    with DummyServer(args.server, config, flags, os.path.join(args.out, f"server_{chunk}.log"),
                     args.timeout_s) as server:
        subprocess.run([args.loadgen, "--server", server.address, "--concurrency", "1",
                        "--num_requests", str(args.num_requests),
                        "--warmup_requests", str(args.warmup_requests),
                        "--input_len", str(args.input_len), "--output_len", str(args.output_len),
                        "--json", report], check=True, timeout=args.timeout_s)
    with open(report) as f:
        r = json.load(f)
    if r["completed"] != args.num_requests:
        raise RuntimeError(f"chunk {chunk}: {r['completed']} of {args.num_requests} completed: "
                           f"{r.get('errors')}")
    ttft = r["ttft_s"]["p50"]
    return {"chunk": chunk, "ttft_p50_s": ttft, "ttft_max_s": r["ttft_s"]["max"],
            "prefill_tokens_per_s": args.input_len / ttft, "pool_mib": mib}


def main(argv=None):
    args, server_flags = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        row = run_chunk(args, server_flags, chunk)
        rows.append(row)
        print(f"{args.shape} kv {args.kv_heads}, one {args.input_len}-token prompt, chunks of "
              f"{chunk}: TTFT p50 {row['ttft_p50_s']:.2f} s (max {row['ttft_max_s']:.2f}), "
              f"{row['prefill_tokens_per_s']:.0f} tokens/s; pool {row['pool_mib']} MiB",
              flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"shape": args.shape, "kv_heads": args.kv_heads, "input_len": args.input_len,
                   "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
