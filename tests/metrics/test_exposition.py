#!/usr/bin/env python3
"""gqa-server's /metrics as an operator's tools read it: `promtool check metrics` (Prometheus's
own linter, from Debian's prometheus package; deploy/install-deps.sh --python puts it in
.venv/bin) on a scrape taken after a request, so every family has samples."""
import argparse
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

# Names promtool may report, each with why it is allowed (README "Metrics").
DEPRECATED = {
    "gqa_kv_cache_blocks_total": "old name of gqa_kv_cache_blocks, exported in 0.1.x only",
}

failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures += 1


def start_server(args, work):
    model = work / "model"
    subprocess.run([args.make_checkpoint, f"--out={model}", "--layers=1", "--hidden=64",
                    "--heads=4", "--kv_heads=2", "--head_dim=16", "--vocab=100"],
                   check=True, stdout=subprocess.DEVNULL)
    ports = work / "ports"
    server = subprocess.Popen([args.server, f"--model={model}", "--host=127.0.0.1", "--port=0",
                               "--metrics_port=0", "--http_port=0", f"--port_file={ports}",
                               "--kv_cache_memory=16MiB"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(1200):
        if ports.exists() and ports.read_text().strip():
            break
        if server.poll() is not None:
            sys.exit("gqa-server exited:\n" + server.stdout.read())
        time.sleep(0.05)
    grpc_port, metrics_port = ports.read_text().split()[:2]
    return server, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"


def scrape(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--server", "--cli", "--make-checkpoint", "--promtool"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    promtool = shutil.which(args.promtool)
    if promtool is None:
        sys.exit(f"no promtool at {args.promtool}: run `bash deploy/install-deps.sh --python`")

    with tempfile.TemporaryDirectory() as tmp:
        server, address, url = start_server(args, pathlib.Path(tmp))
        try:
            subprocess.run([args.cli, f"--server={address}", "--ids=3,4,5",
                            "--max_new_tokens=3", "--ignore_eos"], check=True,
                           stdout=subprocess.DEVNULL)
            text = scrape(url)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True)
    problems = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    unexpected = [p for p in problems if p.split()[0] not in DEPRECATED]
    check(not unexpected, "promtool check metrics: nothing but the deprecated names" +
          "".join("\n     " + p for p in unexpected))
    check(lint.returncode in (0, 3) and (lint.returncode == 0) == (not problems),
          f"promtool ran (exit {lint.returncode})")
    samples = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_virtual_memory_bytes", "process_start_time_seconds",
                 "process_open_fds", "process_max_fds"):
        check(samples.get(name, 0) > 0, f"{name} {samples.get(name)}")
    check(abs(samples.get("process_start_time_seconds", 0) - time.time()) < 600,
          "process_start_time_seconds is about now")
    for name in DEPRECATED:
        check(f"# HELP {name} Deprecated: use " in text, f"{name}'s HELP says it is deprecated")
    # The Gateway API Inference Extension's model-server protocol, as an endpoint picker reads it
    # (docs/gateway-api-inference-extension.md): three gauges and the cache-config info metric.
    for name in ("gqa_requests_waiting", "gqa_requests_running", "gqa_kv_cache_usage_ratio",
                 "gqa_cache_config_info"):
        check(f"# TYPE {name} gauge\n" in text, f"{name} is a gauge")
    usage = samples.get("gqa_kv_cache_usage_ratio", -1)
    check(0 <= usage <= 1, f"gqa_kv_cache_usage_ratio {usage} is a fraction")
    info = [k for k in samples if k.startswith("gqa_cache_config_info{")]
    check(len(info) == 1 and 'block_size="16"' in info[0] and
          re.search(r'num_gpu_blocks="[1-9][0-9]*"', info[0]) is not None and
          samples[info[0]] == 1, f"gqa_cache_config_info: {info}")

    print(f"{failures} failure(s)" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
