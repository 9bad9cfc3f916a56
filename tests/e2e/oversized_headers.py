#!/usr/bin/env python3
"""Oversized request headers against gqa-server over raw HTTP/2 (no gRPC client library, which
would refuse to send them): on one connection, a long Generate stream and then a stream whose
HEADERS carry a header far over the server's advertised SETTINGS_MAX_HEADER_LIST_SIZE. The
oversized stream must end with a gRPC status (not a dropped connection), the long stream beside
it must run to its end, and a fresh connection must be served. Prints what each stream got.

  oversized_headers.py --server build-cpu/server/gqa-server \\
      --make-checkpoint build-cpu/server/gqa-make-checkpoint [--kib 64 --kib 512]
"""
import argparse
import pathlib
import select
import signal
import sys
import tempfile
import time

import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, \
    SettingsFrame

from rapid_reset_flood import GENERATE, Flooder, generate_request, serves, start_server

failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    failures += 0 if ok else 1


def headers(address, extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":path", GENERATE),
            (":authority", address), ("content-type", "application/grpc"),
            ("te", "trailers")] + list(extra)


class FrameReader:
    """Reads the server's frames itself (hyperframe, hpack), where h2 would treat gRPC 1.51's
    second answer on a stream it has reset as an error of the whole connection, as gRPC's own
    client does: every frame is recorded per stream, SETTINGS are acknowledged."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 1 << 16
        self.log = {}  # stream id -> ["HEADERS grpc-status ...", "DATA n", "RST_STREAM c"]

    def read(self, timeout):
        """Records the frames that arrive within `timeout`; False once the server closed."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return True
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            self.buffer = self.buffer[9 + length:]
            self.record(frame)
        return True

    def record(self, frame):
        entries = self.log.setdefault(frame.stream_id, [])
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, HeadersFrame):
            fields = dict(self.decoder.decode(frame.data))
            entries.append(f"grpc-status {fields['grpc-status']} {fields.get('grpc-message', '')}"
                           .strip() if "grpc-status" in fields else "HEADERS")
        elif isinstance(frame, DataFrame):
            entries.append(f"DATA {len(frame.data)}")
        elif isinstance(frame, RstStreamFrame):
            entries.append(f"RST_STREAM {frame.error_code}")
        elif isinstance(frame, GoAwayFrame):
            entries.append(f"GOAWAY {frame.error_code}")

    def ended(self, stream_id):
        return any(e.startswith(("grpc-status", "RST_STREAM")) for e in self.log.get(stream_id, []))


def run(address, kib, long_tokens):
    """On one connection, stream 1: a normal request for `long_tokens` tokens; stream 3, sent once
    stream 1 has answered: a short request with an x-big header of `kib` KiB. Returns the frames
    each stream got."""
    f = Flooder(address)
    reader = FrameReader(f.sock)
    try:
        f.conn.send_headers(1, headers(address))
        f.conn.send_data(1, generate_request(4, long_tokens), end_stream=True)
        f.flush()
        sent_big = False
        deadline = time.time() + 60
        while time.time() < deadline and not (reader.ended(1) and reader.ended(3)):
            if not sent_big and reader.log.get(1):
                f.conn.send_headers(3, headers(address, [("x-big", "b" * (kib << 10))]))
                f.conn.send_data(3, generate_request(4, 4), end_stream=True)
                f.flush()
                sent_big = True
            if not reader.read(1):
                break
        while reader.read(1) and time.time() < deadline + 5:  # anything after both ended
            pass
    finally:
        f.close()
    return reader.log


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--make-checkpoint", required=True)
    parser.add_argument("--kib", type=int, action="append", help="header sizes (repeatable)")
    args = parser.parse_args()
    args.server_arg = []
    sizes = args.kib or [64, 512]
    with tempfile.TemporaryDirectory() as tmp:
        server, address, _ = start_server(args, pathlib.Path(tmp))
        try:
            for kib in sizes:
                log = run(address, kib, long_tokens=200)
                long_stream = [e for e in log.get(1, []) if not e.startswith("DATA")]
                data = sum(int(e.split()[1]) for e in log.get(1, []) if e.startswith("DATA"))
                print(f"{kib} KiB header: the long stream got {data} bytes and {long_stream}; "
                      f"the oversized stream got {log.get(3)}")
                # Not a failure: gRPC 1.51 answers the oversized stream a second time after its
                # RST_STREAM, which h2 (like gRPC's client) takes as a connection error, so
                # whether the long stream finishes first depends on timing (README, "oversized
                # metadata"). What the server must do is checked below.
                finished = long_stream == ["HEADERS", "grpc-status 0"] and data > 0
                print(("ok   " if finished else "note ") + f"{kib} KiB: the long stream on the "
                      f"same connection {'ran to its end' if finished else 'was cut by the client'}")
                first = (log.get(3) or ["nothing"])[0]
                check(first.startswith("grpc-status 8 "),
                      f"{kib} KiB: the oversized stream's answer is RESOURCE_EXHAUSTED with a "
                      f"message ({first})")
                check(serves(address, generate_request(4, 4)),
                      f"{kib} KiB: a fresh connection is served after it")
            check(server.poll() is None, "the server is still running")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(f"{failures} failure(s)" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
