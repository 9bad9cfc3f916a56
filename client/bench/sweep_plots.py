#!/usr/bin/env python3
"""The plots of the KV-head sweep (sweep.py): one PNG per experiment, drawn with matplotlib's
Agg backend from the sweep's rows (dicts with the results.csv columns). Points whose figure is
null (or an empty CSV cell) are left out, and a note says which.

sweep.py calls plot_all() at its end; to redraw from a finished sweep:
  python3 client/bench/sweep_plots.py SWEEP_OUT/results.csv [--out DIR]
"""
import argparse
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

INT_COLUMNS = ("kv_heads", "batch", "num_requests", "input_len", "output_len", "context")


def num(v):
    """A row value as float, None where null, empty or not a number."""
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def series(rows, x_key, y_key, scale=1.0):
    """(xs, ys) of the rows where both are present, sorted by x; and how many were not."""
    pts = sorted((num(r.get(x_key)), num(r.get(y_key)) * scale) for r in rows
                 if num(r.get(x_key)) is not None and num(r.get(y_key)) is not None)
    return [p[0] for p in pts], [p[1] for p in pts], len(rows) - len(pts)


def draw(ax, rows, x_key, y_key, label, note, scale=1.0, **style):
    xs, ys, missing = series(rows, x_key, y_key, scale)
    if missing:
        note(f"  plot: {label}: {missing} point(s) without {y_key} left out")
    if xs:
        ax.plot(xs, ys, label=label, marker=style.pop("marker", "o"), **style)
    return bool(xs)


def kv_axis(ax, kvs):
    ax.set_xscale("log", base=2)
    ax.set_xticks(kvs)
    ax.set_xticklabels([str(k) for k in kvs])
    ax.set_xlim(max(kvs) * 1.3, min(kvs) / 1.3)  # 32 (MHA) on the left, 1 (MQA) on the right
    ax.set_xlabel("KV heads (log2)")
    ax.grid(True, alpha=0.3)


def log2_axis(ax, values, label):
    """A log2 x axis with a tick at every value, 1024s written as 'k'."""
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v in values})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t // 1024}k" if t >= 1024 and t % 1024 == 0 else str(t)
                        for t in ticks])
    ax.set_xlabel(label)


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fig6(rows, path, note):
    rows = [r for r in rows if r["experiment"] == "fig6"]
    kvs = sorted({int(num(r["kv_heads"])) for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    draw(a, rows, "kv_heads", "tpot_s_mean", "TPOT mean (client)", note, 1e3)
    draw(a, rows, "kv_heads", "server_decode_step_s_mean", "decode step (server)", note, 1e3)
    draw(a, rows, "kv_heads", "server_decode_roofline_s_mean", "decode roofline (server)", note,
         1e3, linestyle="--", marker="x")
    a.set_ylabel("ms")
    a.set_title("time per output token")
    kv_axis(a, kvs)
    a.set_ylim(bottom=0)
    a.legend()
    draw(b, rows, "kv_heads", "e2e_s_mean", "time per request (e2e mean)", note)
    b.set_ylabel("s")
    b.set_title("time per request")
    kv_axis(b, kvs)
    b.set_ylim(bottom=0)
    b.legend()
    r0 = rows[0]
    fig.suptitle(f"fig6: {r0['shape']} shape, input {r0['input_len']}, output "
                 f"{r0['output_len']}, concurrency {r0['batch']}")
    return save(fig, path)


def plot_context(rows, path, note):
    rows = [r for r in rows if r["experiment"] == "context"]
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, kv in enumerate(sorted({int(num(r["kv_heads"])) for r in rows}, reverse=True)):
        sub = [r for r in rows if int(num(r["kv_heads"])) == kv]
        c = colors[i % len(colors)]
        draw(ax, sub, "context", "server_decode_attention_share", f"kv {kv} measured", note,
             100, color=c)
        draw(ax, sub, "context", "predicted_attention_share", f"kv {kv} predicted", note, 100,
             color=c, linestyle="--", marker="x")
    log2_axis(ax, [num(r["context"]) for r in rows], "context (tokens, log2)")
    ax.set_ylabel("attention share of a decode step (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(f"context: {rows[0]['shape']} shape, batch 1")
    return save(fig, path)


def plot_bigcode(rows, path, note):
    rows = [r for r in rows if r["experiment"] == "bigcode"]
    kvs = sorted({int(num(r["kv_heads"])) for r in rows}, reverse=True)
    groups = [("gqa-server (max e2e)", "server", "e2e_s_max"),
              ("HF generate", "hf_generate", "hf_total_s")]
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / len(kvs)
    for i, kv in enumerate(kvs):
        vals = []
        for name, source, key in groups:
            r = next((r for r in rows if r["source"] == source and int(num(r["kv_heads"])) == kv),
                     {})
            if num(r.get(key)) is None:
                note(f"  plot: bigcode: no {name} figure for kv {kv}")
            vals.append(num(r.get(key)) or 0.0)
        ax.bar([g + (i - (len(kvs) - 1) / 2) * width for g in range(len(groups))], vals, width,
               label=f"kv {kv}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_ylabel("time for the batch (s)")
    r0 = rows[0]
    ax.set_title(f"bigcode: batch {r0['batch']} x {r0['input_len']} prompt, "
                 f"{r0['output_len']} new tokens ({r0['shape']} shape)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


def speedups(rows, num_key, den_key=None):
    """{batch: value(kv max) / value(kv min)} over rows keyed by kv_heads and batch."""
    den_key = den_key or num_key
    kvs = sorted({int(num(r["kv_heads"])) for r in rows})
    by = {(int(num(r["kv_heads"])), int(num(r["batch"]))): r for r in rows}
    out = []
    for b in sorted({int(num(r["batch"])) for r in rows}):
        hi = num(by.get((kvs[-1], b), {}).get(num_key))
        lo = num(by.get((kvs[0], b), {}).get(den_key))
        out.append({"batch": b, "speedup": hi / lo if hi is not None and lo else None})
    return out, kvs


def plot_batch(rows, path, note):
    rows = [r for r in rows if r["experiment"] == "batch"]
    fig, ax = plt.subplots(figsize=(8, 5))
    meas, kvs = speedups(rows, "server_decode_step_s_mean")
    roof, _ = speedups(rows, "server_decode_roofline_s_mean")
    draw(ax, meas, "batch", "speedup", "measured (decode step, /metrics)", note)
    draw(ax, roof, "batch", "speedup", "roofline", note, linestyle="--", marker="x")
    log2_axis(ax, [m["batch"] for m in meas], "batch (log2)")
    ax.set_ylabel(f"decode step kv{kvs[-1]} / kv{kvs[0]}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(f"batch: MHA/MQA speedup ({rows[0]['shape']} shape, input "
                 f"{rows[0]['input_len']}, output {rows[0]['output_len']})")
    return save(fig, path)


def plot_peers(rows, path, note):
    rows = [r for r in rows if r["experiment"] == "peers"]
    for r in rows:
        r["server_ms"] = None if num(r.get("server_decode_step_s_mean")) is None else \
            num(r["server_decode_step_s_mean"]) * 1e3
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, kv in enumerate(sorted({int(num(r["kv_heads"])) for r in rows}, reverse=True)):
        sub = [r for r in rows if int(num(r["kv_heads"])) == kv]
        c = colors[i % len(colors)]
        draw(ax, sub, "batch", "server_ms", f"kv {kv} server (/metrics)", note, color=c)
        draw(ax, sub, "batch", "bench_step_ms", f"kv {kv} gqa-bench", note, color=c,
             linestyle="--", marker="s")
        draw(ax, sub, "batch", "peer_ms", f"kv {kv} PyTorch peer", note, color=c,
             linestyle=":", marker="^")
    log2_axis(ax, [num(r["batch"]) for r in rows], "batch (log2)")
    ax.set_ylabel("decode step (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"peers: decode step at context {rows[0]['context']} ({rows[0]['shape']})")
    return save(fig, path)


PLOTS = {"fig6": plot_fig6, "context": plot_context, "bigcode": plot_bigcode,
         "batch": plot_batch, "peers": plot_peers}


def plot_all(rows, out_dir, note=print):
    """One PNG per experiment present in rows; returns their paths."""
    paths = []
    for exp, fn in PLOTS.items():
        if any(r["experiment"] == exp for r in rows):
            paths.append(fn([dict(r) for r in rows], os.path.join(out_dir, f"{exp}.png"), note))
    return paths


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in INT_COLUMNS:
            if num(r.get(k)) is not None:
                r[k] = int(num(r[k]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="a sweep's results.csv")
    ap.add_argument("--out", help="directory for the PNGs (default: the CSV's)")
    args = ap.parse_args()
    for path in plot_all(read_rows(args.csv), args.out or os.path.dirname(args.csv) or "."):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
