#!/usr/bin/env python3
"""The KV-head sweep through the real server: one command that starts gqa-server on
random-weight Llama-shaped models with a given number of KV heads, drives it with gqa-loadgen,
reads the load generator's --json report (client latencies and the server's own step figures
from /metrics), and writes results.csv, results.md and one PNG per experiment.

Experiments (--experiments, comma-separated; all by default):
  fig6     GQA paper Figure 6 / Table 1 analogue: time per output token and per request vs KV
           heads (one shape, closed loop), beside the server's decode step and its roofline.
  context  attention-roofline notebook analogue: share of a batch-1 decode step spent in
           attention vs context (7b shape; MHA, GQA-8, MQA), measured (device time of the
           attention over the step's, sampled steps) and predicted from the bytes read.
  bigcode  bigcode's MQA profiling analogue: a batch of 8 prompts of 16 tokens, 1024 new tokens,
           MHA vs MQA, in the server and in Hugging Face `generate` (hf_generate_peer.py).
  batch    MHA/MQA decode-step speedup vs batch size, measured and roofline, from /metrics.
  peers    the batch experiment's decode shapes in `gqa-bench decode` (CUDA builds, --bench_bin)
           and the compiled-PyTorch peer decode_peer.py, beside the server's decode step.

Every run starts its own server (the context and batch experiments: one server per KV-head
count, several loadgen runs in sequence), writes the loadgen report and the raw /metrics scrapes
taken before and after the measured part into --out/runs/, and the server's log into --out/logs/.
An --out that holds a results.csv keeps its rows of the experiments not run this time (--fresh
drops them), so a sweep can be split over several commands (peers reads the batch experiment's
server figures from there too).
Figures the server or the loadgen cannot give are null: they become empty CSV cells, missing
plot points and a note. --small is the CPU/CI version of everything (the "tiny" shape).

Usage (from the repository root):
  # full sweep on a GPU (CUDA build)
  python3 client/bench/sweep.py --server_bin build/server/gqa-server \\
      --loadgen_bin build/client/gqa-loadgen --bench_bin build/client/gqa-bench --out sweep-out
  # CPU / CI version
  python3 client/bench/sweep.py --small --server_bin build-cpu/server/gqa-server \\
      --loadgen_bin build-cpu/client/gqa-loadgen --out /tmp/sweep-small
  # one experiment, other KV-head counts
  python3 client/bench/sweep.py ... --experiments fig6 --kv_heads 32,8,1

Only the standard library here (sweep_plots.py, imported at the end, needs matplotlib and numpy).
"""
import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from dummy_server import DummyServer, read_text  # noqa: E402

# Model shapes (HF Llama config fields). dtype is the checkpoint's torch_dtype.
SHAPES = {
    "1b": dict(layers=16, hidden=2048, heads=32, head_dim=64, ffn=8192, vocab=128256, tied=True,
               theta=500000.0, max_pos=131072, dtype="bfloat16"),
    "8b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=14336, vocab=128256,
               tied=False, theta=500000.0, max_pos=131072, dtype="bfloat16"),
    "7b": dict(layers=32, hidden=4096, heads=32, head_dim=128, ffn=11008, vocab=32000,
               tied=False, theta=10000.0, max_pos=4096, dtype="bfloat16"),
    "tiny": dict(layers=2, hidden=128, heads=4, head_dim=32, ffn=256, vocab=512, tied=False,
                 theta=10000.0, max_pos=4096, dtype="float32"),
}
EXPERIMENTS = ("fig6", "context", "bigcode", "batch", "peers")

# Published figures shown beside ours.
# GQA paper (Ainslie et al. 2023), Table 1: T5-XXL inference time per sample, TPUv4.
GQA_PAPER_TIME_PER_SAMPLE_S = {"MHA": 1.51, "GQA-8": 0.28, "MQA": 0.24}
# bigcode multi_query_experiments, HF generate, batch 8 x 16 prompt tokens, 1024 new, V100.
BIGCODE_V100_S = {"MHA": 19.78, "MQA": 15.19}
# attention-roofline notebook: A100, Llama-2-7B MHA, batch 1, share of a decode step's time.
NOTEBOOK_A100_SHARE = {1024: 0.038, 128000: 0.829}

# Defaults: (full GPU sweep, --small CPU/CI sweep).
DEFAULTS = {
    "backend": ("cuda", "cpu"),
    "shape": ("1b", "tiny"),
    "kv_heads": ("32,16,8,4,2,1", "4,1"),
    "fig6_input": (2048, 32),
    "fig6_output": (512, 16),
    "fig6_concurrency": (16, 2),
    "context_shape": ("7b", "tiny"),
    "contexts": ("1k,2k,4k,8k,16k,32k,64k,128k", "64,128,256"),
    "context_output": (32, 8),
    "context_kv": ("32,8,1", "4,1"),
    "bigcode_batch": (8, 2),
    "bigcode_prompt": (16, 8),
    "bigcode_new_tokens": (1024, 16),
    "bigcode_kv": ("32,1", "4,1"),
    "batches": ("1,8,32,64,128", "1,2,4"),
    "batch_input": (2048, 32),
    "batch_output": (128, 8),
    "batch_kv": ("32,1", "4,1"),
}


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------ model shapes

def model_config(shape, kv_heads, max_model_len):
    """The HF Llama config.json of `shape` with `kv_heads` KV heads."""
    s = SHAPES[shape]
    if s["heads"] % kv_heads:
        raise ValueError(f"{shape}: {kv_heads} KV heads do not divide {s['heads']} heads")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s["hidden"], "intermediate_size": s["ffn"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": kv_heads, "head_dim": s["head_dim"], "vocab_size": s["vocab"],
        "max_position_embeddings": max(s["max_pos"], max_model_len),
        "rms_norm_eps": 1e-5, "rope_theta": s["theta"], "torch_dtype": s["dtype"],
        "tie_word_embeddings": s["tied"], "bos_token_id": 0, "eos_token_id": 1,
    }


def weight_bytes(shape, kv_heads, elt=2):
    """Bytes of weights one decode step reads: every matrix once, the embedding table only
    through the lm_head (as gqa-bench's floor and the server's roofline count them)."""
    s = SHAPES[shape]
    h, q, kv, ffn = s["hidden"], s["heads"] * s["head_dim"], kv_heads * s["head_dim"], s["ffn"]
    layer = h * (q + 2 * kv) + q * h + 3 * ffn * h + 2 * h
    return elt * (s["layers"] * layer + s["vocab"] * h + h)


def kv_bytes_per_token(shape, kv_heads, elt=2):
    """K and V of one token in every layer."""
    s = SHAPES[shape]
    return 2 * s["layers"] * kv_heads * s["head_dim"] * elt


def predicted_attention_share(shape, kv_heads, context, batch=1, elt=2):
    """Predicted share of one decode step spent in attention, from bytes read alone:
    kv / (weights + kv), with kv = batch x 2 x layers x context x kv_heads x head_dim x elt.

    This is the attention-roofline notebook's model, whose attention traffic is
    "batch x layers x 2 x context x hidden / group size" elements (hidden / group size =
    kv_heads x head_dim) and whose step is memory bound; the weights are every matrix read once
    with the embedding only through the lm_head (the notebook counts the embedding twice and
    12 x hidden^2 per layer instead of the real FFN width, hence its 3.8% where this gives 3.9%
    at context 1024 for Llama-2-7B MHA)."""
    kv = batch * context * kv_bytes_per_token(shape, kv_heads, elt)
    return kv / (weight_bytes(shape, kv_heads, elt) + kv)


def parse_list(text, cast=int):
    """'1k,2k,512' -> [1024, 2048, 512] (k = 1024)."""
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1024 if part.endswith("k") else 1
        out.append(cast(part.rstrip("k")) * mult)
    return out


# ------------------------------------------------------------------------------------- plan

@dataclasses.dataclass
class Run:
    """One gqa-loadgen run against a running server."""
    experiment: str
    shape: str
    kv_heads: int
    concurrency: int
    num_requests: int
    warmup: int
    input_len: int
    output_len: int

    @property
    def context(self):
        return self.input_len + self.output_len

    @property
    def label(self):
        return (f"{self.experiment}-{self.shape}-kv{self.kv_heads}-c{self.concurrency}"
                f"-in{self.input_len}-out{self.output_len}")


@dataclasses.dataclass
class ServerJob:
    """One server start (shape, KV heads, limits) and the loadgen runs against it."""
    experiment: str
    shape: str
    kv_heads: int
    runs: list
    profile_interval: int = None  # --step_profile_interval (None: the server's default)

    @property
    def name(self):
        return f"{self.experiment}-{self.shape}-kv{self.kv_heads}"

    @property
    def max_model_len(self):
        return max(r.context for r in self.runs) + 16

    @property
    def max_num_seqs(self):
        return max(r.concurrency for r in self.runs)


def resolve(args, key):
    """The flag's value, or its full/--small default."""
    value = getattr(args, key)
    if value is None:
        value = DEFAULTS[key][1 if args.small else 0]
    return value


def profile_interval(args, experiment):
    """--step_profile_interval for the experiment's servers: the flag, else every step for the
    context experiment (a batch-1 request has few decode steps) and --small (short runs), else
    the server's default (None)."""
    if args.step_profile_interval is not None:
        return args.step_profile_interval
    return 1 if args.small or experiment == "context" else None


def plan_fig6(args):
    shape, conc = resolve(args, "shape"), resolve(args, "fig6_concurrency")
    n = args.fig6_requests or 2 * conc
    jobs = []
    for kv in parse_list(resolve(args, "kv_heads")):
        run = Run("fig6", shape, kv, conc, n, conc, resolve(args, "fig6_input"),
                  resolve(args, "fig6_output"))
        jobs.append(ServerJob("fig6", shape, kv, [run], profile_interval(args, "fig6")))
    return jobs


def plan_context(args):
    shape, out = resolve(args, "context_shape"), resolve(args, "context_output")
    contexts = parse_list(resolve(args, "contexts"))
    jobs = []
    for kv in parse_list(resolve(args, "context_kv")):
        # One request per context, in sequence on one server; one warm-up request before the
        # first (startup effects), none before the rest.
        runs = [Run("context", shape, kv, 1, 1, int(i == 0), ctx - out, out)
                for i, ctx in enumerate(contexts)]
        jobs.append(ServerJob("context", shape, kv, runs, profile_interval(args, "context")))
    return jobs


def plan_bigcode(args):
    shape, batch = resolve(args, "shape"), resolve(args, "bigcode_batch")
    jobs = []
    for kv in parse_list(resolve(args, "bigcode_kv")):
        run = Run("bigcode", shape, kv, batch, batch, 1, resolve(args, "bigcode_prompt"),
                  resolve(args, "bigcode_new_tokens"))
        jobs.append(ServerJob("bigcode", shape, kv, [run], profile_interval(args, "bigcode")))
    return jobs


def plan_batch(args):
    shape = resolve(args, "shape")
    jobs = []
    for kv in parse_list(resolve(args, "batch_kv")):
        runs = [Run("batch", shape, kv, b, 2 * b, b, resolve(args, "batch_input"),
                    resolve(args, "batch_output")) for b in parse_list(resolve(args, "batches"))]
        jobs.append(ServerJob("batch", shape, kv, runs, profile_interval(args, "batch")))
    return jobs


def peer_shapes(args):
    """(shape, kv, batch, context) of the batch experiment's decode steps, at the mean context
    of the decode phase (input + output / 2)."""
    shape = resolve(args, "shape")
    ctx = resolve(args, "batch_input") + resolve(args, "batch_output") // 2
    return [(shape, kv, b, ctx) for kv in parse_list(resolve(args, "batch_kv"))
            for b in parse_list(resolve(args, "batches"))]


# ------------------------------------------------------------------------------------ server

def server_for(args, job, log_path):
    """gqa-server for one job: the shape's config.json with the job's KV heads, a pool for
    `max_num_seqs` sequences of the longest context."""
    flags = ["--backend", args.backend, "--max_model_len", str(job.max_model_len),
             "--max_num_seqs", str(job.max_num_seqs), "--kv_cache_memory",
             kv_cache_memory(args, job)]
    if job.profile_interval is not None:
        flags += ["--step_profile_interval", str(job.profile_interval)]
    return DummyServer(args.server_bin, model_config(job.shape, job.kv_heads, job.max_model_len),
                       flags + list(args.server_arg or []), log_path, args.server_start_timeout,
                       prefix="gqa-sweep-model-")


def kv_cache_memory(args, job):
    """Pool for `concurrency` sequences of the longest context, with 10% and a few blocks of
    slack (4-byte elements on the CPU, whose pool follows the checkpoint's dtype)."""
    elt = 4 if args.backend == "cpu" else 2
    per_token = kv_bytes_per_token(job.shape, job.kv_heads, elt)
    tokens = job.max_num_seqs * (job.max_model_len + 64)
    mib = math.ceil(tokens * per_token * 1.1 / (1 << 20))
    return f"{max(mib, 16)}MiB"


def device_from_log(text):
    """'backend cuda on NVIDIA H200; grpc ...' -> 'NVIDIA H200' (None where absent)."""
    m = re.search(r"backend (\S+) on (.+?); grpc", text)
    return m.group(2) if m else None


# ----------------------------------------------------------------------------------- loadgen

def run_loadgen(args, run, server, out):
    """Runs gqa-loadgen for `run`; returns its JSON report (None where it wrote none)."""
    stem = os.path.join(out, "runs", run.label)
    cmd = [args.loadgen_bin, "--server", f"127.0.0.1:{server.grpc_port}",
           "--metrics_url", f"http://127.0.0.1:{server.metrics_port}/metrics",
           "--num_requests", str(run.num_requests), "--warmup_requests", str(run.warmup),
           "--concurrency", str(run.concurrency), "--input_len", str(run.input_len),
           "--output_len", str(run.output_len), "--seed", str(args.seed),
           "--json", stem + ".json", "--save_metrics", stem, "--label", run.label]
    for path in (stem + ".json", stem + ".before.prom", stem + ".after.prom"):
        if os.path.exists(path):
            os.remove(path)
    with open(os.path.join(out, "logs", run.label + ".loadgen.log"), "w") as f:
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                timeout=args.run_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    report = None
    if os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            report = json.load(f)
    if rc != 0:
        log(f"    gqa-loadgen exited with {rc} (see logs/{run.label}.loadgen.log)")
    return report, rc


def flatten(prefix, value, into):
    """Nested dicts -> 'a_b_c' keys; lists -> ';'-joined; dict leaves of counts -> JSON."""
    if isinstance(value, dict) and prefix == "errors":
        into[prefix] = json.dumps(value, sort_keys=True) if value else ""
    elif isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}_{k}" if prefix else k, v, into)
    elif isinstance(value, list):
        into[prefix] = ";".join(str(v) for v in value)
    else:
        into[prefix] = value
    return into


def run_row(run, report, rc, meta):
    row = {"experiment": run.experiment, "source": "server", "shape": run.shape,
           "kv_heads": run.kv_heads, "batch": run.concurrency, "num_requests": run.num_requests,
           "warmup_requests": run.warmup, "input_len": run.input_len,
           "output_len": run.output_len, "context": run.context, "loadgen_rc": rc,
           "report": f"runs/{run.label}.json", "metrics_prefix": f"runs/{run.label}"}
    if run.experiment == "context":
        row["predicted_attention_share"] = predicted_attention_share(
            run.shape, run.kv_heads, run.context)
    if report is not None:
        flat = flatten("", report, {})
        flat.pop("label", None)
        row.update({k: v for k, v in flat.items() if k not in row})
    row.update(meta)
    return row


# -------------------------------------------------------------------------------------- peers

def run_decode_peer(args, shapes, out):
    """decode_peer.py over `shapes`; {(kv, batch, ctx): ms per step}."""
    cmd = [args.python, os.path.join(HERE, "decode_peer.py")]
    if args.backend == "cpu":
        cmd += ["--device", "cpu", "--no-compile", "--dtype", "fp32"]
    elif args.peer_no_compile:
        cmd += ["--no-compile"]
    cmd += ["decode"] + [f"{s}:{kv}:{b}:{c}" for s, kv, b, c in shapes]
    text, rc = run_logged(cmd, os.path.join(out, "logs", "decode_peer.log"), args.run_timeout)
    found = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 6 and f[0] == "decode":
            found[(int(f[2]), int(f[3]), int(f[4]))] = to_float(f[5])
    if rc != 0:
        log(f"    decode_peer.py exited with {rc} (see logs/decode_peer.log)")
    return found


BENCH_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\|\s+([-\d.naif]+)\s+([-\d.naif]+)"
                       r"\s+([-\d.naif]+)\s")


def parse_bench(text):
    """gqa-bench decode's table rows -> {(kv, batch, ctx): {step_ms, dev_ms, floor_ms}}."""
    found = {}
    for line in text.splitlines():
        m = BENCH_ROW.match(line)
        if m:
            found[(int(m.group(2)), int(m.group(3)), int(m.group(4)))] = {
                "bench_step_ms": to_float(m.group(5)), "bench_device_ms": to_float(m.group(6)),
                "bench_floor_ms": to_float(m.group(7))}
    return found


def run_bench(args, shapes, out):
    """gqa-bench decode --only for every shape it can hold (it is built with max_num_seqs 64
    and max_model_len 8256); its stdout goes raw to logs/gqa-bench-decode.txt."""
    usable = [s for s in shapes if s[2] <= 64 and s[3] <= 8192 and s[0] in ("1b", "8b")]
    for s in shapes:
        if s not in usable:
            log(f"    gqa-bench decode cannot run {s[0]}:{s[1]}:{s[2]}:{s[3]} (it holds 1b/8b, "
                "batch <= 64, context <= 8192): left empty")
    if not usable:
        return {}
    cmd = [args.bench_bin, "decode"]
    for s, kv, b, c in usable:
        cmd += ["--only", f"{s}:{kv}:{b}:{c}"]
    text, rc = run_logged(cmd, os.path.join(out, "logs", "gqa-bench-decode.txt"),
                          args.run_timeout)
    if rc != 0:
        log(f"    gqa-bench exited with {rc} (see logs/gqa-bench-decode.txt)")
    return parse_bench(text)


def run_logged(cmd, path, timeout):
    """Runs cmd; stdout goes to path (and is returned), stderr to path + '.stderr'."""
    with open(path, "w") as out, open(path + ".stderr", "w") as err:
        err.write("# " + " ".join(cmd) + "\n")
        err.flush()
        try:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                timeout=timeout, cwd=REPO).returncode
        except (subprocess.TimeoutExpired, OSError) as e:
            err.write(f"# {type(e).__name__}: {e}\n")
            rc = "timeout" if isinstance(e, subprocess.TimeoutExpired) else "not started"
    return read_text(path), rc


def to_float(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def run_hf_peer(args, kv, out):
    """hf_generate_peer.py for the bigcode shape; its JSON line as a dict (None on failure)."""
    shape = resolve(args, "shape")
    cmd = [args.python, os.path.join(HERE, "hf_generate_peer.py"), "--shape", shape,
           "--kv_heads", str(kv), "--batch", str(resolve(args, "bigcode_batch")),
           "--prompt", str(resolve(args, "bigcode_prompt")),
           "--new_tokens", str(resolve(args, "bigcode_new_tokens"))]
    if args.backend == "cpu":
        cmd += ["--device", "cpu", "--dtype", "fp32"]
    text, rc = run_logged(cmd, os.path.join(out, "logs", f"hf_generate-kv{kv}.log"),
                          args.run_timeout)
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = read_text(os.path.join(out, "logs", f"hf_generate-kv{kv}.log.stderr")).strip()
    log(f"    hf_generate_peer.py gave no result (exit {rc}): "
        f"{err.splitlines()[-1] if err else 'no output'}")
    return None


# ------------------------------------------------------------------------------------ driving

class Progress:
    def __init__(self, total):
        self.total, self.done = total, 0

    def step(self, what):
        self.done += 1
        log(f"[{self.done}/{self.total}] {what}")


def run_jobs(args, jobs, progress, meta, out):
    """Each job's server, and its loadgen runs in order; (rows, labels of failed runs)."""
    rows, failures = [], []
    for job in jobs:
        log_path = os.path.join(out, "logs", job.name + ".server.log")
        done = 0
        try:
            with server_for(args, job, log_path) as server:
                meta["device"] = meta.get("device") or device_from_log(read_text(log_path))
                for run in job.runs:
                    progress.step(f"{run.experiment} {run.shape} kv={run.kv_heads} "
                                  f"batch={run.concurrency} in={run.input_len} "
                                  f"out={run.output_len} x{run.num_requests}")
                    t0 = time.monotonic()
                    report, rc = run_loadgen(args, run, server, out)
                    rows.append(run_row(run, report, rc, meta))
                    done += 1
                    summarize(rows[-1], time.monotonic() - t0)
                    if report is None or rc != 0:
                        failures.append(run.label)
        except RuntimeError as e:
            log(f"  {job.name}: {e}")
            for run in job.runs[done:]:
                progress.step(f"{run.experiment} {run.shape} kv={run.kv_heads}: not run")
                rows.append(run_row(run, None, "server failed", meta))
                failures.append(run.label)
    return rows, failures


def summarize(row, seconds):
    def ms(key):
        v = row.get(key)
        return "-" if v is None else f"{v * 1e3:.3f} ms"

    log(f"    {seconds:.1f} s: tpot {ms('tpot_s_mean')}, decode step "
        f"{ms('server_decode_step_s_mean')}, roofline {ms('server_decode_roofline_s_mean')}, "
        f"out tokens {row.get('output_tokens')}")


def peers_rows(args, out, progress, meta, server_rows):
    shapes = peer_shapes(args)
    progress.step(f"peers decode_peer.py {len(shapes)} shapes")
    peer = run_decode_peer(args, shapes, out)
    bench = {}
    if args.bench_bin:
        progress.step(f"peers gqa-bench decode {len(shapes)} shapes")
        bench = run_bench(args, shapes, out)
    else:
        log("    no --bench_bin (gqa-bench exists in CUDA builds only): its column is empty")
    server = {(r["kv_heads"], r["batch"]): r for r in server_rows if r["experiment"] == "batch"}
    if not server:
        log("    the batch experiment did not run: no server figures beside the peers")
    rows = []
    for s, kv, b, c in shapes:
        srv = server.get((kv, b), {})
        row = {"experiment": "peers", "source": "peers", "shape": s, "kv_heads": kv,
               "batch": b, "context": c, "peer_ms": peer.get((kv, b, c)),
               "server_decode_step_s_mean": srv.get("server_decode_step_s_mean"),
               "server_decode_roofline_s_mean": srv.get("server_decode_roofline_s_mean")}
        row.update(bench.get((kv, b, c), {}))
        row.update(meta)
        rows.append(row)
    return rows


def bigcode_hf_rows(args, out, progress, meta):
    rows = []
    if not hf_available(args.python):
        log("    SKIPPED hf_generate_peer.py: torch or transformers missing in " + args.python)
        return rows
    for kv in parse_list(resolve(args, "bigcode_kv")):
        progress.step(f"bigcode hf_generate {resolve(args, 'shape')} kv={kv}")
        res = run_hf_peer(args, kv, out)
        row = {"experiment": "bigcode", "source": "hf_generate", "shape": resolve(args, "shape"),
               "kv_heads": kv, "batch": resolve(args, "bigcode_batch"),
               "input_len": resolve(args, "bigcode_prompt"),
               "output_len": resolve(args, "bigcode_new_tokens"),
               "hf_total_s": res and res.get("total_s"),
               "hf_per_step_ms": res and res.get("per_step_ms")}
        row.update(meta)
        rows.append(row)
        if res:
            log(f"    {res['total_s']:.3f} s, {res['per_step_ms']:.3f} ms per step")
    return rows


def hf_available(python):
    try:
        return subprocess.run([python, "-c", "import torch, transformers"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_meta(args):
    """Columns every row carries: device, commit, date."""
    commit = None
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    device = None
    if args.backend == "cuda" and shutil.which("nvidia-smi"):
        try:
            device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                    capture_output=True, text=True,
                                    timeout=30).stdout.strip().splitlines()[0] or None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return {"device": device, "backend": args.backend, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------ outputs

LEAD_COLUMNS = ["experiment", "source", "shape", "kv_heads", "batch", "num_requests",
                "warmup_requests", "input_len", "output_len", "context"]
TAIL_COLUMNS = ["device", "backend", "commit", "date", "report", "metrics_prefix", "loadgen_rc"]


def cell(text):
    """A CSV cell back as int, float, None (empty) or the text."""
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def earlier_rows(path, experiments):
    """The rows of an earlier results.csv in --out whose experiments are not run now (so that
    a sweep can be split over several invocations into one directory)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: cell(v) for k, v in r.items()} for r in csv.DictReader(f)]
    kept = [r for r in rows if r.get("experiment") not in experiments]
    if kept:
        names = sorted({r["experiment"] for r in kept})
        log(f"kept {len(kept)} row(s) of {', '.join(names)} from the earlier {path} "
            "(--fresh drops them)")
    return kept


def write_csv(rows, path):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    middle = [k for k in keys if k not in LEAD_COLUMNS and k not in TAIL_COLUMNS]
    columns = LEAD_COLUMNS + middle + TAIL_COLUMNS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})


def fmt(v, scale=1.0, digits=3, suffix=""):
    if v is None or v == "":
        return "–"
    return f"{float(v) * scale:.{digits}f}{suffix}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def kv_name(kv, heads):
    return "MHA" if kv == heads else ("MQA" if kv == 1 else f"GQA-{kv}")


def md_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def md_fig6(rows):
    rows = [r for r in rows if r["experiment"] == "fig6"]
    if not rows:
        return ""
    heads = SHAPES[rows[0]["shape"]]["heads"]
    mha = next((r for r in rows if r["kv_heads"] == heads), None)
    lines = []
    for r in sorted(rows, key=lambda r: -r["kv_heads"]):
        name = kv_name(r["kv_heads"], heads)
        paper = GQA_PAPER_TIME_PER_SAMPLE_S.get(name)
        rel = ratio(r.get("e2e_s_mean"), mha and mha.get("e2e_s_mean"))
        lines.append([r["kv_heads"], name, fmt(r.get("tpot_s_mean"), 1e3),
                      fmt(r.get("tpot_s_p50"), 1e3), fmt(r.get("e2e_s_mean"), 1, 3),
                      fmt(rel, 1, 2), fmt(paper / GQA_PAPER_TIME_PER_SAMPLE_S["MHA"], 1, 2)
                      if paper else "–", fmt(r.get("output_token_throughput"), 1, 0),
                      fmt(r.get("server_decode_step_s_mean"), 1e3),
                      fmt(r.get("server_decode_roofline_s_mean"), 1e3),
                      fmt(r.get("server_decode_roofline_fraction"), 100, 1, "%"),
                      fmt(r.get("server_decode_attention_share"), 100, 1, "%"),
                      fmt(r.get("server_decode_achieved_bandwidth_Bps"), 1e-9, 0)])
    r0 = rows[0]
    return (f"## fig6: time per token and per request vs KV heads ({r0['shape']} shape, "
            f"input {r0['input_len']}, output {r0['output_len']}, concurrency {r0['batch']}, "
            f"{r0['num_requests']} requests)\n\n" +
            md_table(["KV heads", "", "TPOT mean ms", "TPOT p50 ms", "time/request s",
                      "vs MHA", "paper vs MHA", "out tok/s", "decode step ms",
                      "roofline ms", "roofline frac", "attn share", "GB/s"], lines) +
            "\n\npaper vs MHA: GQA paper Table 1, T5-XXL time per sample on TPUv4 (MHA "
            f"{GQA_PAPER_TIME_PER_SAMPLE_S['MHA']} s, GQA-8 {GQA_PAPER_TIME_PER_SAMPLE_S['GQA-8']}"
            f" s, MQA {GQA_PAPER_TIME_PER_SAMPLE_S['MQA']} s), over MHA's.\n")


def md_context(rows):
    rows = [r for r in rows if r["experiment"] == "context"]
    if not rows:
        return ""
    shape = rows[0]["shape"]
    heads = SHAPES[shape]["heads"]
    lines = []
    for r in sorted(rows, key=lambda r: (-r["kv_heads"], r["context"])):
        ref = NOTEBOOK_A100_SHARE.get(r["context"])
        lines.append([r["context"], kv_name(r["kv_heads"], heads),
                      fmt(r.get("server_decode_attention_share"), 100, 1, "%"),
                      fmt(r.get("predicted_attention_share"), 100, 1, "%"),
                      fmt(ref, 100, 1, "%") if ref and r["kv_heads"] == heads else "–",
                      fmt(r.get("server_decode_step_s_mean"), 1e3),
                      fmt(r.get("server_decode_roofline_s_mean"), 1e3)])
    ref = [f"{fmt(share, 100, 1, '%')} at context {ctx:,} (our formula: "
           f"{fmt(predicted_attention_share(shape, heads, ctx), 100, 1, '%')})"
           for ctx, share in NOTEBOOK_A100_SHARE.items()] if shape == "7b" else []
    note = ("notebook (A100, Llama-2-7B MHA, batch 1): " + "; ".join(ref) + ".\n") if ref else ""
    return (f"## context: decode attention share vs context ({shape} shape, batch 1, output "
            f"{rows[0]['output_len']})\n\n" +
            md_table(["context", "KV", "measured share", "predicted share", "notebook A100",
                      "decode step ms", "roofline ms"], lines) +
            "\n\nmeasured: device time of the attention over the step's, on profiled decode "
            "steps; predicted: kv bytes / (weight bytes + kv bytes) of one step.\n" + note)


def md_bigcode(rows):
    rows = [r for r in rows if r["experiment"] == "bigcode"]
    if not rows:
        return ""
    shape = rows[0]["shape"]
    heads = SHAPES[shape]["heads"]
    srv = {r["kv_heads"]: r for r in rows if r["source"] == "server"}
    hf = {r["kv_heads"]: r for r in rows if r["source"] == "hf_generate"}
    new = rows[0]["output_len"]

    def line(name, mha, mqa, tokens):
        return [name, fmt(mha, 1, 3), fmt(mqa, 1, 3), fmt(ratio(mha, mqa), 1, 2),
                fmt(ratio(mha, tokens), 1e3), fmt(ratio(mqa, tokens), 1e3)]

    def get(d, kv, key):
        return d.get(kv, {}).get(key)

    lines = [line("bigcode, HF generate, V100 (GPT-2-style), 8 x 16, 1024 new",
                  BIGCODE_V100_S["MHA"], BIGCODE_V100_S["MQA"], 1024),
             line(f"gqa-server ({shape}), batch max e2e", get(srv, heads, "e2e_s_max"),
                  get(srv, 1, "e2e_s_max"), new),
             line(f"HF generate ({shape}, eager), this device", get(hf, heads, "hf_total_s"),
                  get(hf, 1, "hf_total_s"), new)]
    tpot = [f"gqa-server TPOT mean: MHA {fmt(get(srv, heads, 'tpot_s_mean'), 1e3)} ms, MQA "
            f"{fmt(get(srv, 1, 'tpot_s_mean'), 1e3)} ms"]
    if not hf:
        tpot.append("HF generate: not run (torch/transformers missing)")
    return (f"## bigcode: batch of {rows[0]['batch']} x {rows[0]['input_len']} prompt tokens, "
            f"{new} new tokens, MHA (kv {heads}) vs MQA (kv 1)\n\n" +
            md_table(["setup", "MHA s", "MQA s", "MHA/MQA", "MHA ms/token", "MQA ms/token"],
                     lines) + "\n\n" + "; ".join(tpot) + ".\n")


def md_batch(rows):
    rows = [r for r in rows if r["experiment"] == "batch"]
    if not rows:
        return ""
    heads = SHAPES[rows[0]["shape"]]["heads"]
    by = {(r["kv_heads"], r["batch"]): r for r in rows}
    kvs = sorted({r["kv_heads"] for r in rows}, reverse=True)
    hi, lo = kvs[0], kvs[-1]
    lines = []
    for b in sorted({r["batch"] for r in rows}):
        a, m = by.get((hi, b), {}), by.get((lo, b), {})
        lines.append([b, fmt(a.get("server_decode_step_s_mean"), 1e3),
                      fmt(m.get("server_decode_step_s_mean"), 1e3),
                      fmt(ratio(a.get("server_decode_step_s_mean"),
                                m.get("server_decode_step_s_mean")), 1, 2),
                      fmt(a.get("server_decode_roofline_s_mean"), 1e3),
                      fmt(m.get("server_decode_roofline_s_mean"), 1e3),
                      fmt(ratio(a.get("server_decode_roofline_s_mean"),
                                m.get("server_decode_roofline_s_mean")), 1, 2),
                      fmt(a.get("server_decode_mean_batch"), 1, 1),
                      fmt(m.get("server_decode_mean_batch"), 1, 1)])
    r0 = rows[0]
    return (f"## batch: {kv_name(hi, heads)}/{kv_name(lo, heads)} decode-step speedup vs batch "
            f"({r0['shape']} shape, input {r0['input_len']}, output {r0['output_len']})\n\n" +
            md_table(["batch", f"kv{hi} step ms", f"kv{lo} step ms", "speedup",
                      f"kv{hi} roofline ms", f"kv{lo} roofline ms", "roofline speedup",
                      f"kv{hi} mean batch", f"kv{lo} mean batch"], lines) + "\n")


def md_peers(rows):
    rows = [r for r in rows if r["experiment"] == "peers"]
    if not rows:
        return ""
    lines = []
    for r in rows:
        lines.append([r["kv_heads"], r["batch"], r["context"],
                      fmt(r.get("server_decode_step_s_mean"), 1e3),
                      fmt(r.get("bench_step_ms")), fmt(r.get("bench_device_ms")),
                      fmt(r.get("bench_floor_ms")), fmt(r.get("peer_ms"))])
    kvs = sorted({r["kv_heads"] for r in rows}, reverse=True)
    by = {(r["kv_heads"], r["batch"]): r for r in rows}
    sp = []
    for b in sorted({r["batch"] for r in rows}):
        a, m = by.get((kvs[0], b), {}), by.get((kvs[-1], b), {})
        s = ratio(a.get("server_decode_step_s_mean"), m.get("server_decode_step_s_mean"))
        g = ratio(a.get("bench_step_ms"), m.get("bench_step_ms"))
        p = ratio(a.get("peer_ms"), m.get("peer_ms"))
        off = ratio(s, g)
        verdict = "–" if off is None else ("within 10%" if abs(off - 1) <= 0.10 else "OFF >10%")
        sp.append([b, fmt(s, 1, 2), fmt(g, 1, 2), fmt(p, 1, 2),
                   fmt(None if off is None else off - 1, 100, 1, "%"), verdict])
    return (f"## peers: decode step at context {rows[0]['context']} ({rows[0]['shape']} shape)\n\n"
            + md_table(["KV", "batch", "ctx", "server step ms (/metrics)", "gqa-bench step ms",
                        "gqa-bench device ms", "floor ms", "PyTorch peer ms"], lines) +
            f"\n\nkv{kvs[0]}/kv{kvs[-1]} speedup (acceptance: server within 10% of gqa-bench):\n\n"
            + md_table(["batch", "server", "gqa-bench", "PyTorch peer", "server vs gqa-bench",
                        ""], sp) + "\n")


def write_markdown(rows, meta, path):
    parts = [f"# KV-head sweep\n\ndevice {meta.get('device') or 'unknown'}, backend "
             f"{meta.get('backend')}, commit {meta.get('commit') or 'unknown'}, "
             f"{meta.get('date')}\n"]
    parts += [p for p in (md_fig6(rows), md_context(rows), md_bigcode(rows), md_batch(rows),
                          md_peers(rows)) if p]
    text = "\n".join(parts)
    with open(path, "w") as f:
        f.write(text)
    return text


def note_nulls(rows):
    """Which figures came back null, once per figure."""
    keys = ["server_decode_step_s_mean", "server_decode_roofline_s_mean",
            "server_decode_attention_share", "server_decode_achieved_bandwidth_Bps",
            "tpot_s_mean", "e2e_s_mean"]
    for key in keys:
        missing = [r for r in rows if r["source"] == "server" and r.get(key) is None]
        if missing:
            log(f"note: {key} is null in {len(missing)} run(s) (e.g. {missing[0]['report']}); "
                "empty in the CSV, left out of the plots")
    names = {n for r in rows for n in str(r.get("server_metric_names_missing") or "").split(";")
             if n}
    if names:
        log("note: the server's /metrics lacked: " + ", ".join(sorted(names)))


# --------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server_bin", required=True, help="gqa-server")
    ap.add_argument("--loadgen_bin", required=True, help="gqa-loadgen")
    ap.add_argument("--bench_bin", help="gqa-bench (CUDA builds; the peers experiment)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--small", action="store_true", help="the CPU/CI version (tiny shape)")
    ap.add_argument("--backend", choices=["cpu", "cuda"], help="default cuda (--small: cpu)")
    ap.add_argument("--python", default=sys.executable,
                    help="Python with torch for the peers (default: this one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server_arg", action="append", default=[],
                    help="extra gqa-server argument (repeatable), e.g. "
                         "--server_arg=--enforce_eager")
    ap.add_argument("--step_profile_interval", type=int,
                    help="server's --step_profile_interval (default: the server's; 1 for "
                         "the context experiment and --small)")
    ap.add_argument("--server_start_timeout", type=float, default=900)
    ap.add_argument("--run_timeout", type=float, default=3600, help="seconds per loadgen/peer run")
    ap.add_argument("--no_plots", action="store_true")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the rows of experiments not run now from an earlier "
                         "--out/results.csv (default: keep them)")
    ap.add_argument("--peer_no_compile", action="store_true",
                    help="decode_peer.py --no-compile on the GPU too")
    g = ap.add_argument_group("experiment parameters (defaults: full sweep / --small)")
    for key, (full, small) in DEFAULTS.items():
        if key == "backend":
            continue
        g.add_argument("--" + key, type=type(full), help=f"default {full} / {small}")
    g.add_argument("--fig6_requests", type=int, help="default 2 x --fig6_concurrency")
    args = ap.parse_args(argv)
    args.backend = resolve(args, "backend")
    chosen = {e.strip() for e in args.experiments.split(",") if e.strip()}
    bad = sorted(chosen - set(EXPERIMENTS))
    if bad:
        ap.error(f"unknown experiments {bad}; choose from {', '.join(EXPERIMENTS)}")
    args.experiments = [e for e in EXPERIMENTS if e in chosen]  # peers after batch
    for key in ("server_bin", "loadgen_bin", "bench_bin"):
        path = getattr(args, key)
        if path and not os.access(path, os.X_OK):
            ap.error(f"--{key} {path}: not an executable file")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out
    for sub in ("", "runs", "logs"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    planners = {"fig6": plan_fig6, "context": plan_context, "bigcode": plan_bigcode,
                "batch": plan_batch}
    jobs = {e: planners[e](args) for e in args.experiments if e in planners}
    total = sum(len(j.runs) for js in jobs.values() for j in js)
    if "bigcode" in jobs:
        total += len(parse_list(resolve(args, "bigcode_kv")))
    if "peers" in args.experiments:
        total += 1 + bool(args.bench_bin)
    meta = run_meta(args)
    progress = Progress(total)
    started = time.monotonic()
    rows = [] if args.fresh else earlier_rows(os.path.join(out, "results.csv"), args.experiments)
    failures = []
    for exp in args.experiments:
        if exp in jobs:
            r, f = run_jobs(args, jobs[exp], progress, meta, out)
            rows += r
            failures += f
        if exp == "bigcode":
            rows += bigcode_hf_rows(args, out, progress, meta)
        if exp == "peers":
            rows += peers_rows(args, out, progress, meta, rows)
    for r in rows:  # the device may have come from a later server's log
        r["device"] = r.get("device") or meta.get("device")
    write_csv(rows, os.path.join(out, "results.csv"))
    text = write_markdown(rows, meta, os.path.join(out, "results.md"))
    note_nulls(rows)
    if not args.no_plots:
        sys.path.insert(0, HERE)
        try:
            import sweep_plots  # noqa: E402 - matplotlib only where plots are wanted
        except ImportError as e:
            log(f"no plots: {e} (pip install matplotlib, or --no_plots)")
            return 1
        for path in sweep_plots.plot_all(rows, out, log):
            log(f"wrote {path}")
    log(f"\nwrote {out}/results.csv and results.md in {time.monotonic() - started:.0f} s\n")
    print(text)
    if failures:
        log(f"{len(failures)} run(s) failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
