#!/usr/bin/env python3
"""Prefix caching benchmark: TTFT and throughput with --enable_prefix_caching on and off.

For each model shape (dummy weights, config.json only) it starts gqa-server twice (caching on,
then off) and runs gqa-loadgen on three workloads:

  shared      a shared N-token system prompt + M-token user turns at C concurrent streams
  shared-c1   the same one request at a time: the TTFT of a request whose prefix is cached
  multiturn   conversations of T turns, each turn resending the conversation so far (after the
              same system prompt), C conversations at a time
  unique      N + M random tokens per request, nothing shared: what caching costs when it
              never hits
  turn-c1     the M-token user turn alone, one request at a time, no shared prefix: the chunk
              a cache hit still computes, i.e. the lowest TTFT a hit can reach (the floor of
              shared-c1's "on" row)

and writes results.json and results.md (TTFT mean/p50/p99, request and output-token throughput,
the server's prefix-cache hit rate, on/off ratios). Examples:

  # GPU (the issue's figures): 1B and 8B shapes, 2000 + 100 tokens, 32 streams
  python3 client/bench/prefix_bench.py --server_bin build/server/gqa-server \\
      --loadgen_bin build/client/gqa-loadgen --backend cuda --shapes 1b,8b --out /tmp/prefix
  # CPU (docs/BENCHMARKS.md's CPU figures)
  python3 client/bench/prefix_bench.py --server_bin build-cpu/server/gqa-server \\
      --loadgen_bin build-cpu/client/gqa-loadgen --small --out /tmp/prefix-cpu
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dummy_server import DummyServer, read_text  # noqa: E402
from sweep import SHAPES, model_config  # noqa: E402

# A CPU shape with enough work per token for prefill to show (the sweep's "tiny" has almost none);
# model_config reads the sweep's table.
SHAPES["small"] = dict(layers=4, hidden=512, heads=8, head_dim=64, ffn=1536, vocab=4096,
                       tied=False, theta=10000.0, max_pos=8192, dtype="float32")

# (GPU, --small CPU) defaults.
DEFAULTS = {
    "backend": ("cuda", "cpu"),
    "shapes": ("1b,8b", "small"),
    "kv_heads": (8, 2),
    "system_len": (2000, 2000),
    "user_len": (100, 100),
    "output_len": (100, 16),
    "concurrency": (32, 8),
    "num_requests": (256, 16),
    "c1_requests": (16, 6),
    "turns": (4, 3),
    "kv_cache_memory": ("", "1GiB"),
}


def log(msg):
    print(msg, flush=True)


def server_for(a, shape, caching, log_path):
    """gqa-server for `shape` with prefix caching on or off, long enough for every turn."""
    max_len = a.system_len + a.turns * (a.user_len + a.output_len) + 64
    flags = ["--backend", a.backend, "--max_model_len", str(max_len),
             "--max_num_seqs", str(max(a.concurrency, 1)),
             "--enable_prefix_caching=" + ("true" if caching else "false")]
    if a.kv_cache_memory:
        flags += ["--kv_cache_memory", a.kv_cache_memory]
    return DummyServer(a.server_bin, model_config(shape, a.kv_heads, max_len),
                       flags + list(a.server_arg or []), log_path, a.server_start_timeout,
                       prefix="gqa-prefix-model-")


def workloads(a):
    """(name, loadgen flags) of each workload."""
    common = ["--output_len", str(a.output_len), "--seed", str(a.seed)]
    shared = ["--shared_prefix_len", str(a.system_len), "--input_len", str(a.user_len)]
    conversations = max(a.num_requests // a.turns, 1)
    return [
        ("shared", shared + ["--concurrency", str(a.concurrency), "--num_requests",
                             str(a.num_requests), "--warmup_requests", "1"] + common),
        ("shared-c1", shared + ["--concurrency", "1", "--num_requests", str(a.c1_requests),
                                "--warmup_requests", "1"] + common),
        ("multiturn", shared + ["--turns", str(a.turns), "--concurrency",
                                str(min(a.concurrency, conversations)), "--num_requests",
                                str(conversations * a.turns)] + common),
        ("turn-c1", ["--input_len", str(a.user_len), "--concurrency", "1", "--num_requests",
                     str(a.c1_requests), "--warmup_requests", "1"] + common),
        ("unique", ["--input_len", str(a.system_len + a.user_len), "--concurrency",
                    str(a.concurrency), "--num_requests", str(a.num_requests),
                    "--warmup_requests", "1"] + common),
    ]


def run_loadgen(a, server, name, flags, out):
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, name)
    cmd = [a.loadgen_bin, "--server", f"127.0.0.1:{server.grpc_port}", "--metrics_url",
           f"http://127.0.0.1:{server.metrics_port}/metrics", "--json", stem + ".json",
           "--label", name] + flags
    with open(stem + ".log", "w") as f:
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                            timeout=a.run_timeout).returncode
    if rc != 0:
        raise RuntimeError(f"gqa-loadgen exited with {rc}; see {stem}.log")
    with open(stem + ".json") as f:
        return json.load(f)


def figures(report):
    s = report.get("server") or {}
    ttft = report.get("ttft_s") or {}
    return {
        "ttft_mean_s": ttft.get("mean"), "ttft_p50_s": ttft.get("p50"),
        "ttft_p99_s": ttft.get("p99"),
        "request_throughput": report.get("request_throughput"),
        "output_throughput": report.get("output_token_throughput"),
        "hit_rate": s.get("prefix_cache_hit_rate"),
    }


def fmt(v, scale=1.0, digits=3):
    return "-" if v is None else f"{v * scale:.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def markdown(rows, meta):
    lines = [f"Device: {meta['device']}; {meta['date']}; commit {meta['commit']}.", "",
             "| shape | workload | caching | TTFT mean ms | p50 | p99 | req/s | out tok/s | "
             "hit rate | TTFT off/on | tok/s on/off |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        off = next((o for o in rows if o["shape"] == r["shape"] and
                    o["workload"] == r["workload"] and not o["caching"]), None)
        on = r["caching"]
        lines.append(
            f"| {r['shape']} | {r['workload']} | {'on' if on else 'off'} | "
            f"{fmt(r['ttft_mean_s'], 1e3, 1)} | {fmt(r['ttft_p50_s'], 1e3, 1)} | "
            f"{fmt(r['ttft_p99_s'], 1e3, 1)} | {fmt(r['request_throughput'], 1, 2)} | "
            f"{fmt(r['output_throughput'], 1, 1)} | {fmt(r['hit_rate'], 1, 3)} | "
            f"{fmt(ratio(off['ttft_mean_s'], r['ttft_mean_s']), 1, 2) if on and off else ''} | "
            f"{fmt(ratio(r['output_throughput'], off['output_throughput']), 1, 3) if on and off else ''} |")
    return "\n".join(lines) + "\n"


def git_commit():
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def device(log_text):
    import re
    m = re.search(r"backend (\S+) on (.+?); grpc", log_text)
    return m.group(2) if m else "?"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server_bin", required=True)
    ap.add_argument("--loadgen_bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="the CPU defaults")
    ap.add_argument("--backend")
    ap.add_argument("--shapes", help="comma-separated: 1b, 8b, 7b, tiny, small")
    ap.add_argument("--kv_heads", type=int)
    ap.add_argument("--system_len", type=int, help="shared system prompt tokens (N)")
    ap.add_argument("--user_len", type=int, help="user turn tokens (M)")
    ap.add_argument("--output_len", type=int)
    ap.add_argument("--concurrency", type=int, help="streams (C)")
    ap.add_argument("--num_requests", type=int)
    ap.add_argument("--c1_requests", type=int, help="requests of the one-at-a-time run")
    ap.add_argument("--turns", type=int)
    ap.add_argument("--kv_cache_memory")
    ap.add_argument("--workloads", default="shared,shared-c1,turn-c1,multiturn,unique")
    ap.add_argument("--commit", default=os.environ.get("GQA_COMMIT"),
                    help="the commit to stamp on the results (default: $GQA_COMMIT, else git's "
                         "HEAD; a copy of the tree without .git cannot say)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server_arg", action="append", help="extra gqa-server flag (repeatable)")
    ap.add_argument("--server_start_timeout", type=float, default=600)
    ap.add_argument("--run_timeout", type=float, default=3600)
    a = ap.parse_args(argv)
    for key, (gpu, cpu) in DEFAULTS.items():
        if getattr(a, key) is None:
            setattr(a, key, cpu if a.small else gpu)
    return a


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    wanted = a.workloads.split(",")
    rows, dev = [], "?"
    for shape in a.shapes.split(","):
        for caching in (True, False):
            tag = f"{shape}-{'on' if caching else 'off'}"
            server_log = os.path.join(a.out, tag + ".server.log")
            with server_for(a, shape, caching, server_log) as server:
                for name, flags in workloads(a):
                    if name not in wanted:
                        continue
                    log(f"{tag} {name} ...")
                    report = run_loadgen(a, server, name, flags, os.path.join(a.out, tag))
                    row = {"shape": shape, "workload": name, "caching": caching}
                    row.update(figures(report))
                    rows.append(row)
                    log(f"  TTFT mean {fmt(row['ttft_mean_s'], 1e3, 1)} ms, "
                        f"{fmt(row['output_throughput'], 1, 1)} tok/s, "
                        f"hit rate {fmt(row['hit_rate'])}")
            dev = device(read_text(server_log))
    meta = {"device": dev, "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "commit": a.commit or git_commit(), "args": vars(a)}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = markdown(rows, meta)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
