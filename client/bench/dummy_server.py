"""gqa-server launchers the benchmark scripts share. ModelServer serves a model directory with
every port picked free: a context manager that starts the server, waits for its port file and
SIGTERMs it on exit. DummyServer first writes a config.json-only model into a temporary
directory (--load_format dummy: random weights) and removes it after (sweep.py, prefix_bench.py);
fp8_quality.py serves a real model with ModelServer."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class ModelServer:
    """gqa-server on `model_dir` with `flags` beyond the model and the ports. `grpc_port` and
    `metrics_port` are set once it serves; `address` is its gRPC host:port."""

    def __init__(self, server_bin, model_dir, flags, log_path, start_timeout_s,
                 prefix="gqa-bench-server-"):
        self.server_bin, self.model_dir, self.flags = server_bin, model_dir, list(flags)
        self.log_path, self.start_timeout_s, self.prefix = log_path, start_timeout_s, prefix
        self.proc = self.log_file = self.tmp = None  # tmp: the port file's directory
        self.grpc_port = self.metrics_port = None

    @property
    def address(self):
        return f"127.0.0.1:{self.grpc_port}"

    def command(self, port_file):
        return [self.server_bin, "--model", self.model_dir, "--port", "0", "--metrics_port", "0",
                "--http_port", "0", "--port_file", port_file, "--host", "127.0.0.1", *self.flags]

    def __enter__(self):
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix=self.prefix)
        port_file = os.path.join(self.tmp, "ports")
        cmd = self.command(port_file)
        self.log_file = open(self.log_path, "w")
        self.log_file.write("# " + " ".join(cmd) + "\n")
        self.log_file.flush()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"gqa-server exited with status {self.proc.returncode}")
            text = read_text(port_file)
            if text.endswith("\n"):
                self.grpc_port, self.metrics_port = (int(p) for p in text.split()[:2])
                return self
            time.sleep(0.1)
        self.fail(f"gqa-server did not write its port file in {self.start_timeout_s} s")
        return self

    def fail(self, why):
        self.stop()
        tail = read_text(self.log_path).splitlines()[-20:]
        raise RuntimeError(why + "; last lines of " + self.log_path + ":\n  " +
                           "\n  ".join(tail))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __exit__(self, *exc):
        self.stop()
        return False


class DummyServer(ModelServer):
    """`config`: config.json's content, written to a temporary model directory served with
    --load_format dummy; `flags`: gqa-server's flags beyond the model, the ports and the load
    format."""

    def __init__(self, server_bin, config, flags, log_path, start_timeout_s,
                 prefix="gqa-bench-model-"):
        super().__init__(server_bin, None, ["--load_format", "dummy", *flags], log_path,
                         start_timeout_s, prefix)
        self.config = config

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix=self.prefix)  # the model and the port file
        self.model_dir = self.tmp
        with open(os.path.join(self.tmp, "config.json"), "w") as f:
            json.dump(self.config, f, indent=1)
        return super().__enter__()
