#!/usr/bin/env python3
"""HTTP/2 rapid reset against gqa-server (CVE-2023-44487's pattern): over a few connections, each
stream is opened with HEADERS and a whole Generate request (DATA) and cancelled at once with
RST_STREAM, so the server's MAX_CONCURRENT_STREAMS never counts it. Prints the server's resident
memory (VmRSS) before, right after and some seconds after each flood, and its peak during it
(VmHWM); then a normal request must still be served. Exit status 1 when the floods after the
first --baseline_rounds leave more than --bound_mib beyond what those left, when the server stops
serving, or when reset streams are counted as invalid requests. The RSS follows each round's
peak (glibc keeps what it freed), and how many streams are in flight at once, so the peak,
depends on timing: a round faster than the first can raise it once more, which is why the
baseline may be taken after more than one round; a leak grows with every round.

  rapid_reset_flood.py --server build-cpu/server/gqa-server \\
      --make-checkpoint build-cpu/server/gqa-make-checkpoint [--streams 5000] [--connections 10]
  rapid_reset_flood.py --address 127.0.0.1:50051 --pid PID    (a server already running)
"""
import argparse
import pathlib
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import h2.config
import h2.connection
import h2.errors
import h2.events

GENERATE = "/gqa.v1.Generation/Generate"


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):  # a length-delimited protobuf field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def generate_request(prompt_len, max_new_tokens):
    """gqa.v1.GenerateRequest{token_ids: {ids: 3..}, stopping: {max_new_tokens}}, gRPC-framed."""
    ids = b"".join(varint(3 + i % 50) for i in range(prompt_len))
    message = field(3, field(1, ids)) + field(5, varint(1 << 3) + varint(max_new_tokens))
    return b"\x00" + len(message).to_bytes(4, "big") + message


def reset_peak(pid):
    """Restarts VmHWM at the current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    try:
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def malloc_trim(pid):
    """Asks the server's allocator to give its free memory back (glibc malloc_trim(0), called
    through gdb), to tell memory the allocator keeps from memory still in use."""
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def rss_mib(pid, key="VmRSS:"):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return -1.0


class Flooder:
    """One HTTP/2 connection that opens and resets streams as fast as it can write them."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.goaway = None
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout=0.0):
        """Reads what the server sent (SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY)."""
        while select.select([self.sock], [], [], timeout)[0]:
            data = self.sock.recv(65536)
            if not data:
                self.goaway = self.goaway or "closed"
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = f"GOAWAY {event.error_code!r}"
            timeout = 0.0
        self.flush()

    def rapid_reset(self, count, body, authority):
        headers = [(":method", "POST"), (":scheme", "http"), (":path", GENERATE),
                   (":authority", authority), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        sent = 0
        for _ in range(count):
            if self.goaway:
                break
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, headers)
            self.conn.send_data(sid, body, end_stream=True)
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            sent += 1
            if sent % 50 == 0:
                self.flush()
                self.pump()
        self.flush()
        return sent

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()


def flood(address, streams, connections, body):
    per = streams // connections
    flooders = [Flooder(address) for _ in range(connections)]
    for f in flooders:
        f.pump(0.2)  # the server's SETTINGS
    sent = 0
    for f in flooders:
        sent += f.rapid_reset(per, body, address)
    for f in flooders:
        f.pump(0.5)
    refused = [f.goaway for f in flooders if f.goaway]
    for f in flooders:
        f.close()
    return sent, refused


def start_server(args, work):
    model = work / "model"
    subprocess.run([args.make_checkpoint, f"--out={model}", "--layers=1", "--hidden=64",
                    "--heads=4", "--kv_heads=2", "--head_dim=16", "--vocab=100"],
                   check=True, stdout=subprocess.DEVNULL)
    ports = work / "ports"
    log = open(work / "server.log", "w")
    server = subprocess.Popen([args.server, f"--model={model}", "--host=127.0.0.1", "--port=0",
                               "--metrics_port=0", "--http_port=0", f"--port_file={ports}",
                               "--kv_cache_memory=16MiB"] + args.server_arg,
                              stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1200):
        if ports.exists() and ports.read_text().strip():
            break
        if server.poll() is not None:
            sys.exit("gqa-server exited:\n" + (work / "server.log").read_text())
        time.sleep(0.05)
    grpc_port, metrics_port = ports.read_text().split()[:2]  # then the HTTP port
    return server, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"


def invalid_requests(metrics_url):
    """gqa_requests_rejected_total{reason="invalid_argument"}, or None without a metrics URL."""
    if not metrics_url:
        return None
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('gqa_requests_rejected_total{reason="invalid_argument"}'):
                return float(line.split()[-1])
    return None


def serves(address, body):
    """`body` as a normal Generate over a fresh connection, read to the trailers: OK or not."""
    f = Flooder(address)
    try:
        sid = f.conn.get_next_available_stream_id()
        f.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", GENERATE),
                                  (":authority", address), ("content-type", "application/grpc"),
                                  ("te", "trailers")])
        f.conn.send_data(sid, body, end_stream=True)
        f.flush()
        deadline = time.time() + 30
        while time.time() < deadline:
            if not select.select([f.sock], [], [], 1)[0]:
                continue
            data = f.sock.recv(65536)
            if not data:
                return False
            for event in f.conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                    if trailers.get(b"grpc-status") != b"0":
                        print(f"grpc-status {trailers.get(b'grpc-status')}: "
                              f"{trailers.get(b'grpc-message')}")
                    return trailers.get(b"grpc-status") == b"0"
            f.flush()
        return False
    finally:
        f.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="gqa-server binary (started here on a tiny model)")
    parser.add_argument("--make-checkpoint", help="gqa-make-checkpoint binary")
    parser.add_argument("--server_arg", action="append", default=[],
                        help="an extra gqa-server flag (repeatable)")
    parser.add_argument("--address", help="a running server's gRPC address (with --pid)")
    parser.add_argument("--pid", type=int, help="that server's process id")
    parser.add_argument("--metrics_url", help="that server's /metrics URL (optional)")
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="floods, one after another")
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the last RSS")
    parser.add_argument("--trim", action="store_true",
                        help="after the floods, call malloc_trim(0) in the server (gdb) and "
                             "print the RSS it leaves")
    parser.add_argument("--bound_mib", type=float, default=32.0,
                        help="most RSS the floods after the baseline rounds may leave behind")
    parser.add_argument("--baseline_rounds", type=int, default=1,
                        help="rounds before the RSS the bound is measured from")
    args = parser.parse_args()
    if not 1 <= args.baseline_rounds < args.rounds:
        parser.error(f"--baseline_rounds {args.baseline_rounds}: must be at least 1 and below "
                     f"--rounds {args.rounds}")

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.address:
            address, pid, metrics_url = args.address, args.pid, args.metrics_url
        else:
            server, address, metrics_url = start_server(args, pathlib.Path(tmp))
            pid = server.pid
        try:
            # The flood's own request, served when not reset: each reset stream is real work.
            body = generate_request(args.prompt_len, args.max_new_tokens)
            if not serves(address, body):
                sys.exit("FAIL the server does not serve the flood's request before the flood")
            start = rss_mib(pid)
            invalid_before = invalid_requests(metrics_url)
            print(f"before: RSS {start:.1f} MiB", flush=True)
            baseline = None
            for round_ in range(1, args.rounds + 1):
                reset_peak(pid)
                t0 = time.time()
                sent, refused = flood(address, args.streams, args.connections, body)
                seconds = time.time() - t0
                right_after = rss_mib(pid)
                time.sleep(args.settle)
                settled = rss_mib(pid)
                if round_ == args.baseline_rounds:
                    baseline = settled
                print(f"round {round_}: {sent} streams reset over {args.connections} "
                      f"connections in {seconds:.1f} s ({', '.join(refused) or 'no GOAWAY'}); "
                      f"RSS {right_after:.1f} MiB right after, {settled:.1f} MiB "
                      f"{args.settle:g} s later; peak during the round "
                      f"{rss_mib(pid, 'VmHWM:'):.1f} MiB",
                      flush=True)
            ok = serves(address, body)
            end = rss_mib(pid)
            counted = True
            if invalid_before is not None:
                invalid = invalid_requests(metrics_url) - invalid_before
                counted = invalid <= args.streams * args.rounds // 100
                print(f"{'ok  ' if counted else 'FAIL'} {invalid:.0f} reset streams counted as "
                      f"invalid requests (gqa_requests_rejected_total{{reason=\"invalid_argument\"}})")
            if args.trim:
                malloc_trim(pid)
                print(f"after malloc_trim(0): RSS {rss_mib(pid):.1f} MiB (from {end:.1f})")
            grown = end - baseline
            print(f"{'ok  ' if ok else 'FAIL'} serves a normal request after the floods")
            verdict = grown <= args.bound_mib
            print(f"{'ok  ' if verdict else 'FAIL'} RSS {start:.1f} -> {baseline:.1f} MiB after "
                  f"round {args.baseline_rounds} -> {end:.1f} MiB after round {args.rounds}: "
                  f"later rounds left {grown:+.1f} MiB (bound {args.bound_mib:g})")
            return 0 if ok and verdict and counted else 1
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
