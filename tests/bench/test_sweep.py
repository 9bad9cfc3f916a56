#!/usr/bin/env python3
"""CI test of the KV-head sweep (client/bench/sweep.py --small): runs every experiment of the
sweep on the tiny shape with the CPU backend through the real gqa-server and gqa-loadgen into a
temporary directory, then checks what it wrote:

  * results.csv, results.md and one PNG per experiment exist and are not empty;
  * every server run completed all its requests, and its output tokens are requests x output
    length (in the loadgen's report and in the server's own generation counter);
  * every server figure in the CSV equals the one this test recomputes from the /metrics scrapes
    the loadgen saved before and after the measured part (its own Prometheus text parser, none of
    the sweep's or the loadgen's code), and the figures the sweep is about are not null;
  * the predicted attention share of the context experiment is in (0, 1) and grows with context.

It asserts no timing. Usage:
  test_sweep.py --server build-cpu/server/gqa-server --loadgen build-cpu/client/gqa-loadgen \\
      [--keep DIR]
"""
import argparse
import csv
import math
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = os.path.join(REPO, "client", "bench", "sweep.py")
EXPERIMENTS = ("fig6", "context", "bigcode", "batch", "peers")
# Server figures that must not be null in any run (every run decodes, every step is profiled).
REQUIRED = ("steps", "step_s_mean", "decode_steps", "decode_step_s_mean",
            "decode_attention_share", "decode_device_step_s_mean", "read_bytes",
            "decode_read_bytes_per_step", "achieved_bandwidth_Bps", "decode_achieved_bandwidth_Bps",
            "device_bandwidth_Bps", "decode_roofline_s_mean", "roofline_fraction",
            "decode_roofline_fraction", "mean_batch", "decode_mean_batch", "preemptions",
            "prompt_tokens", "generation_tokens")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Checks:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", flush=True)
        return ok


# ------------------------------------------------------------------------ Prometheus parsing

def parse_prom(path):
    """Prometheus text format -> {(name, frozenset of (label, value)): float}."""
    samples = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            if not m:
                raise ValueError(f"{path}: cannot parse {line!r}")
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


class Delta:
    """after - before of the series of a name whose labels include the given ones, summed."""

    def __init__(self, before, after):
        self.before, self.after = before, after

    def __call__(self, name, **labels):
        want = set(labels.items())
        return sum(v - self.before.get(key, 0.0) for key, v in self.after.items()
                   if key[0] == name and want <= set(key[1]))

    def gauge(self, name):
        return self.after.get((name, frozenset()))


def div(a, b):
    return a / b if b else None


def recompute(before_path, after_path):
    """The server figures of one run: {figure: value} (None: not computable, a 0 denominator).
    peak_kv_usage is left out: the loadgen polls it during the run."""
    d = Delta(parse_prom(before_path), parse_prom(after_path))
    dur, dev, att = "gqa_step_duration_seconds", "gqa_step_device_seconds", \
        "gqa_step_attention_seconds"
    roof, rb = "gqa_step_roofline_seconds", "gqa_step_read_bytes_total"
    decode_steps = d(dur + "_count", phase="decode")
    return {
        "steps": d(dur + "_count"),
        "step_s_mean": div(d(dur + "_sum"), d(dur + "_count")),
        "decode_steps": decode_steps,
        "decode_step_s_mean": div(d(dur + "_sum", phase="decode"), decode_steps),
        "prefill_steps": d(dur + "_count", phase="prefill"),
        "prefill_step_s_mean": div(d(dur + "_sum", phase="prefill"),
                                   d(dur + "_count", phase="prefill")),
        "mixed_steps": d(dur + "_count", phase="mixed"),
        "attention_share": div(d(att + "_sum"), d(dev + "_sum")),
        "decode_attention_share": div(d(att + "_sum", phase="decode"),
                                      d(dev + "_sum", phase="decode")),
        "decode_device_step_s_mean": div(d(dev + "_sum", phase="decode"),
                                         d(dev + "_count", phase="decode")),
        "read_bytes": d(rb),
        "decode_read_bytes_per_step": div(d(rb, phase="decode"), decode_steps),
        "achieved_bandwidth_Bps": div(d(rb), d(dur + "_sum")),
        "decode_achieved_bandwidth_Bps": div(d(rb, phase="decode"),
                                             d(dur + "_sum", phase="decode")),
        "device_bandwidth_Bps": d.gauge("gqa_device_read_bandwidth_bytes_per_second"),
        "decode_roofline_s_mean": div(d(roof + "_sum", phase="decode"),
                                      d(roof + "_count", phase="decode")),
        "preemptions": d("gqa_preemptions_total"),
        "prompt_tokens": d("gqa_prompt_tokens_total"),
        "generation_tokens": d("gqa_generation_tokens_total"),
        # Roofline time over wall time, summed over the steps (not the mean of per-step ratios).
        "roofline_fraction": div(d(roof + "_sum"), d(dur + "_sum")),
        "decode_roofline_fraction": div(d(roof + "_sum", phase="decode"),
                                        d(dur + "_sum", phase="decode")),
        "mean_batch": div(d("gqa_step_batch_size_sum"), d("gqa_step_batch_size_count")),
        # Sequences decoding per step, over every step.
        "decode_mean_batch": div(d("gqa_step_sequences_sum", state="decoding"),
                                 d("gqa_step_sequences_count", state="decoding")),
    }


# -------------------------------------------------------------------------------- the checks

def num(v):
    if v is None or v == "":
        return None
    return float(v)


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def check_files(c, out):
    for name in ["results.csv", "results.md"] + [f"{e}.png" for e in EXPERIMENTS]:
        path = os.path.join(out, name)
        c.check(os.path.isfile(path) and os.path.getsize(path) > 0, f"{name} missing or empty")
    for e in EXPERIMENTS:
        path = os.path.join(out, f"{e}.png")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                c.check(f.read(8) == b"\x89PNG\r\n\x1a\n", f"{e}.png is not a PNG")


def check_server_run(c, out, r):
    label = r["report"]
    n, out_len = int(r["num_requests"]), int(r["output_len"])
    c.check(num(r.get("completed")) == n and num(r.get("failed")) == 0,
            f"{label}: completed {r.get('completed')} failed {r.get('failed')} of {n}")
    c.check(num(r.get("output_tokens")) == n * out_len,
            f"{label}: output_tokens {r.get('output_tokens')} != {n} x {out_len}")
    c.check(r.get("server_metric_names_missing", "") == "",
            f"{label}: the server lacked metrics {r.get('server_metric_names_missing')}")
    prefix = os.path.join(out, r["metrics_prefix"])
    before, after = prefix + ".before.prom", prefix + ".after.prom"
    if not c.check(os.path.isfile(before) and os.path.isfile(after),
                   f"{label}: no saved /metrics scrapes {before}, {after}"):
        return
    want = recompute(before, after)
    c.check(want["generation_tokens"] == n * out_len,
            f"{label}: the server generated {want['generation_tokens']} tokens, "
            f"not {n} x {out_len}")
    for key in REQUIRED:
        c.check(num(r.get("server_" + key)) is not None, f"{label}: server_{key} is null")
    for key, value in want.items():
        got = num(r.get("server_" + key))
        c.check(close(got, value), f"{label}: server_{key} = {got}, recomputed from /metrics "
                                   f"{value}")
    kv_peak = num(r.get("server_peak_kv_usage"))
    c.check(kv_peak is not None and 0 <= kv_peak <= 1, f"{label}: peak_kv_usage {kv_peak}")


def check_context(c, rows):
    rows = [r for r in rows if r["experiment"] == "context"]
    c.check(len(rows) >= 2, "no context rows")
    for kv in sorted({r["kv_heads"] for r in rows}):
        sub = sorted((int(r["context"]), num(r.get("predicted_attention_share")))
                     for r in rows if r["kv_heads"] == kv)
        shares = [s for _, s in sub]
        c.check(all(s is not None and 0 < s < 1 for s in shares),
                f"context kv {kv}: predicted shares {shares} not all in (0, 1)")
        c.check(all(a < b for a, b in zip(shares, shares[1:]) if a is not None and b is not None),
                f"context kv {kv}: predicted share does not grow with context: {sub}")


def check_peers(c, rows, python):
    has_torch = subprocess.run([python, "-c", "import torch, transformers"],
                               capture_output=True).returncode == 0
    peers = [r for r in rows if r["experiment"] == "peers"]
    c.check(len(peers) > 0, "no peers rows")
    hf = [r for r in rows if r["experiment"] == "bigcode" and r["source"] == "hf_generate"]
    if not has_torch:
        print("SKIPPED: torch/transformers missing: the PyTorch and HF generate peers are not "
              "checked", flush=True)
        return
    for r in peers:
        c.check(num(r.get("peer_ms")) is not None,
                f"peers kv {r['kv_heads']} batch {r['batch']}: no decode_peer.py figure")
        c.check(num(r.get("server_decode_step_s_mean")) is not None,
                f"peers kv {r['kv_heads']} batch {r['batch']}: no server figure")
    c.check(len(hf) == 2 and all(num(r.get("hf_total_s")) for r in hf),
            f"bigcode: hf_generate rows {hf}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="gqa-server")
    ap.add_argument("--loadgen", required=True, help="gqa-loadgen")
    ap.add_argument("--keep", help="write the sweep here and keep it (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gqa-sweep-test-") as tmp:
        out = args.keep or tmp
        cmd = [sys.executable, SWEEP, "--small", "--server_bin", args.server,
               "--loadgen_bin", args.loadgen, "--out", out, "--python", sys.executable]
        print("+ " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=REPO, timeout=840).returncode
        c = Checks()
        c.check(rc == 0, f"sweep.py exited with {rc}")
        check_files(c, out)
        rows = []
        if os.path.isfile(os.path.join(out, "results.csv")):
            with open(os.path.join(out, "results.csv"), newline="") as f:
                rows = list(csv.DictReader(f))
        server_rows = [r for r in rows if r["source"] == "server"]
        c.check({r["experiment"] for r in server_rows} == {"fig6", "context", "bigcode", "batch"},
                f"server runs of {sorted({r['experiment'] for r in server_rows})}")
        for r in server_rows:
            check_server_run(c, out, r)
        check_context(c, rows)
        check_peers(c, rows, sys.executable)
        print(f"{c.passed} passed, {c.failed} failed", flush=True)
        return 1 if c.failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
