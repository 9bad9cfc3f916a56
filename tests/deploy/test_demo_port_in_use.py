#!/usr/bin/env python3
"""deploy/demo.sh run while something listens on its ports (a second demo while the first's
server is up): it must stop at once, saying a server is already running on the port, before it
installs, builds or re-imports anything."""
import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    failures = 0
    for which in ("GQA_PORT", "GQA_METRICS_PORT", "GQA_HTTP_PORT"):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        other = free.getsockname()[1]
        free.close()  # a port nothing listens on
        env = dict(os.environ, GQA_PORT=str(other), GQA_METRICS_PORT=str(other),
                   GQA_HTTP_PORT=str(other))
        env[which] = str(port)
        result = subprocess.run(["bash", str(ROOT / "deploy/demo.sh")], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        busy.close()
        output = result.stdout + result.stderr
        ok = (result.returncode == 1 and f"port {port} is in use" in output and
              "is another process using the port?" in output and "== installing" not in output
              and "configure" not in output)
        print(("ok   " if ok else "FAIL ") + f"{which} in use: exit {result.returncode}: " +
              output.strip().replace("\n", " | "), flush=True)
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
