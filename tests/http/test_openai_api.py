#!/usr/bin/env python3
"""gqa-server's OpenAI-compatible HTTP API (--http_port) through the official `openai` client and
through raw sockets: completions and chat, streamed and not, stop strings, n, usage, echo, every
documented error status, greedy output identical to gRPC (gqa-cli) for the same prompt, and
hostile input (malformed JSON, wrong types, huge bodies, 10k messages, deep nesting, slow clients,
a client that disconnects mid-stream or while its non-streaming request runs, after which the
running and KV gauges return to idle; 10 MB of header lines on the HTTP, HTTPS and metrics ports,
which cost bounded memory; a 503 when every connection is busy), and gqa-loadgen over HTTP
streaming with overlapped streams."""
import argparse
import http.client
import json
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai

TOKEN = "test-token-123"
# A ChatML template (SmolLM2's family), so that the chat endpoint has something to render.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")

failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures += 1


class Server:
    """gqa-server on loopback with the test model; every port picked free."""

    def __init__(self, args, work, name, *extra, model="model", auth=True):
        self.work = work
        ports = work / f"{name}.ports"
        (work / "token").write_text(TOKEN + "\n")
        self.log = open(work / f"{name}.log", "w+")
        self.proc = subprocess.Popen(
            [args.server, f"--model={work / model}", "--host=127.0.0.1", "--port=0",
             "--metrics_port=0", "--http_port=-1", f"--port_file={ports}",
             "--kv_cache_memory=16MiB", "--cpu_threads=1",
             *([f"--auth_token_file={work / 'token'}"] if auth else []), *extra], stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(1200):
            if ports.exists() and len(ports.read_text().split()) == 3:
                break
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"gqa-server exited:\n{self.log.read()}")
            time.sleep(0.05)
        grpc_port, metrics_port, http_port = ports.read_text().split()
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.http_port = int(http_port)
        self.base = f"http://127.0.0.1:{http_port}/v1"

    def client(self, key=TOKEN, **kw):
        return openai.OpenAI(base_url=self.base, api_key=key, max_retries=0, timeout=60, **kw)

    def raw(self, method, path, body=None, headers=None, timeout=30):
        """(status, parsed JSON or text) of one request over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        h = {"Authorization": f"Bearer {TOKEN}"}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data

    def gauge(self, name):
        with urllib.request.urlopen(self.metrics, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def error_of(status_and_body, status, param=None, quote=None, what=""):
    got_status, body = status_and_body
    ok = got_status == status and isinstance(body, dict) and "error" in body
    if ok:
        err = body["error"]
        ok = all(k in err for k in ("message", "type", "param", "code"))
        if param is not None:
            ok = ok and err["param"] == param
        if quote is not None:
            ok = ok and quote in err["message"]
    check(ok, f"{what}: {status} {param or ''} (got {got_status} {str(body)[:200]})")


def rss_mib(pid):
    """The resident memory of process `pid` (VmRSS), in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


FLOOD_BYTES = 10 << 20  # header lines sent down one connection
MAX_FLOOD_GROWTH_MIB = 24  # how much the server's resident memory may grow meanwhile


def header_flood(server, connect, path, serves_next, what):
    """10 MB of small header lines down one connection, without the blank line that would end
    them: the server answers 431 (or 400) or closes the connection, its resident memory grows by
    less than MAX_FLOOD_GROWTH_MIB (cpp-httplib 0.11 alone keeps every line: ~200 MB here), and it
    serves the next request (`serves_next()`). `connect()` opens a plain or TLS socket."""
    before = peak = rss_mib(server.proc.pid)
    sock = connect()
    sock.settimeout(10)
    block = b"a: b\r\n" * 10000
    sent = 0
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
        while sent < FLOOD_BYTES:
            sock.sendall(block)
            sent += len(block)
            if sent % (1 << 20) < len(block):
                peak = max(peak, rss_mib(server.proc.pid))
    except OSError:
        pass  # the server closed the connection
    peak = max(peak, rss_mib(server.proc.pid))
    reply = b""
    try:
        reply = sock.recv(4096)
    except OSError:
        pass
    sock.close()
    status = reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"
    check(status in ("431", "400", "closed"),
          f"{what}: 10 MB of header lines answered 431 or closed (got {status}, {sent} bytes "
          f"sent, {reply[:200]!r})")
    check(peak - before < MAX_FLOOD_GROWTH_MIB,
          f"{what}: resident memory {before:.0f} -> {peak:.0f} MiB during the flood (bound "
          f"+{MAX_FLOOD_GROWTH_MIB})")
    check(server.proc.poll() is None and serves_next(), f"{what}: the next request is served")


def test_header_floods(server):
    """The HTTP port and the metrics port both cap one request's headers."""
    header_flood(server, lambda: socket.create_connection(("127.0.0.1", server.http_port)),
                 "/health", lambda: server.raw("GET", "/health")[0] == 200, "HTTP port")
    metrics_port = int(server.metrics.split(":")[2].split("/")[0])
    header_flood(server, lambda: socket.create_connection(("127.0.0.1", metrics_port)),
                 "/healthz", lambda: server.gauge("gqa_requests_running") is not None,
                 "metrics port")
    # Under the cap: 40 KiB of headers in 500 lines are read as usual.
    status, _ = server.raw("GET", "/health", headers={f"X-Pad-{i}": "p" * 80 for i in range(500)})
    check(status == 200, f"500 header lines (40 KiB) are served: {status}")


def listen_backlog(port):
    """The listening socket's backlog on `port` (ss's Send-Q), or None without ss."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=10).stdout.split()
    except OSError:
        return None
    return int(out[2]) if len(out) > 2 else None


def test_completions(server):
    c = server.client()
    models = c.models.list()
    check([m.id for m in models.data] == ["model"], f"/v1/models lists the served name: {models}")

    r = c.completions.create(model="model", prompt="Hello world", max_tokens=8, temperature=0)
    check(r.object == "text_completion" and len(r.choices) == 1, "completion: one choice")
    check(0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0 and
          r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
          f"completion: usage {r.usage}")
    check(r.choices[0].finish_reason in ("stop", "length"), "completion: finish_reason")
    if r.usage.completion_tokens == 8:
        check(r.choices[0].finish_reason == "length", "completion: 8 of 8 tokens is 'length'")
    greedy = r.choices[0].text
    again = c.completions.create(model="model", prompt="Hello world", max_tokens=8, temperature=0)
    check(again.choices[0].text == greedy, "completion: greedy is repeatable")

    # Token-id prompts, and a list of one prompt.
    ids = c.completions.create(model="model", prompt=[[5, 6, 7]], max_tokens=4, temperature=0)
    check(ids.usage.prompt_tokens == 3, f"completion: token-id prompt (usage {ids.usage})")
    one = c.completions.create(model="model", prompt=["Hello world"], max_tokens=8, temperature=0)
    check(one.choices[0].text == greedy, "completion: a list of one string is that prompt")

    # Streaming: the chunks add up to the same text; include_usage ends with a usage chunk.
    stream = c.completions.create(model="model", prompt="Hello world", max_tokens=8,
                                  temperature=0, stream=True,
                                  stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(text == greedy, f"completion stream: same text ({text!r} vs {greedy!r})")
    check(chunks[-1].choices == [] and chunks[-1].usage is not None and
          chunks[-1].usage.completion_tokens == r.usage.completion_tokens,
          "completion stream: the last chunk carries usage")
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and
              ch.choices[0].finish_reason]
    check(finals == [r.choices[0].finish_reason], f"completion stream: one finish {finals}")

    # Echo puts the prompt in front.
    echo = c.completions.create(model="model", prompt="Hello world", max_tokens=8, temperature=0,
                                echo=True)
    check(echo.choices[0].text == "Hello world" + greedy, "completion: echo")

    # n choices, with a seed: independent and reproducible.
    n = c.completions.create(model="model", prompt="Hello", max_tokens=6, temperature=1.0,
                             seed=3, n=3)
    check(sorted(ch.index for ch in n.choices) == [0, 1, 2], "completion: n=3 gives 3 choices")
    n2 = c.completions.create(model="model", prompt="Hello", max_tokens=6, temperature=1.0,
                              seed=3, n=3)
    check([ch.text for ch in n.choices] == [ch.text for ch in n2.choices],
          "completion: n=3 with a seed is reproducible")
    check(n.usage.completion_tokens == 18, f"completion: usage sums 3 x 6 tokens ({n.usage})")
    ns = list(c.completions.create(model="model", prompt="Hello", max_tokens=6, temperature=1.0,
                                   seed=3, n=3, stream=True))
    by_index = {}
    for ch in ns:
        for choice in ch.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    check([by_index.get(i) for i in range(3)] == [ch.text for ch in n.choices],
          "completion stream: n=3 streams each choice")

    # Stop strings: generation ends before the first match, finish_reason "stop".
    long = c.completions.create(model="model", prompt="Hello world", max_tokens=24,
                                temperature=0).choices[0].text
    stop = next((long[i:i + 2] for i in range(3, len(long) - 2) if long[i:i + 2].strip()), None)
    if stop is None:
        check(False, f"stop: no stop string to pick from {long!r}")
    else:
        s = c.completions.create(model="model", prompt="Hello world", max_tokens=24,
                                 temperature=0, stop=[stop, "zzzz-never"])
        check(s.choices[0].text == long[:long.find(stop)] and
              s.choices[0].finish_reason == "stop",
              f"stop: {stop!r} ends {long!r} at {s.choices[0].text!r}")
    return greedy


def test_grpc_parity(server, args, greedy):
    token = server.work / "token"
    out = subprocess.run([args.cli, f"--server={server.grpc}", "--text=Hello world",
                          "--max_new_tokens=8", "--temperature=0", "--json",
                          f"--auth_token_file={token}"],
                         capture_output=True, text=True, timeout=120)
    text = "".join(json.loads(line).get("text", "") for line in out.stdout.splitlines()
                   if line.startswith("{"))
    check(out.returncode == 0 and text == greedy,
          f"greedy over HTTP equals gRPC: {text!r} vs {greedy!r} {out.stderr[-300:]}")


def test_chat(server):
    c = server.client()
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"}]
    r = c.chat.completions.create(model="model", messages=messages, max_tokens=8, temperature=0)
    check(r.object == "chat.completion" and r.choices[0].message.role == "assistant",
          "chat: an assistant message")
    # The prompt is the template's rendering: its token count is that of the rendered text.
    rendered = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hello<|im_end|>\n"
                "<|im_start|>assistant\n")
    ref = c.completions.create(model="model", prompt=rendered, max_tokens=8, temperature=0)
    check(r.choices[0].message.content == ref.choices[0].text,
          "chat: the same as completing the rendered template")
    parts = c.chat.completions.create(
        model="model", max_tokens=8, temperature=0,
        messages=[messages[0], {"role": "user",
                                "content": [{"type": "text", "text": "Say "},
                                            {"type": "text", "text": "hello"}]}])
    check(parts.choices[0].message.content == r.choices[0].message.content,
          "chat: content as a list of text parts")
    chunks = list(c.chat.completions.create(model="model", messages=messages, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    check(chunks[0].object == "chat.completion.chunk" and
          chunks[0].choices[0].delta.role == "assistant", "chat stream: the first chunk has role")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == r.choices[0].message.content, "chat stream: same text")
    check(chunks[-1].usage is not None and
          chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens, "chat stream: usage")
    no_gen = server.raw("POST", "/v1/chat/completions",
                        {"model": "model", "messages": messages, "max_tokens": 1,
                         "add_generation_prompt": False, "temperature": 0})
    check(no_gen[0] == 200 and no_gen[1]["usage"]["prompt_tokens"] < r.usage.prompt_tokens,
          "chat: add_generation_prompt false leaves the assistant header out")


def test_logprobs(server):
    c = server.client()
    r = c.completions.create(model="model", prompt="Hello world", max_tokens=6, temperature=0,
                             logprobs=2)
    lp = r.choices[0].logprobs
    check(len(lp.tokens) == 6 and len(lp.token_logprobs) == 6 and len(lp.top_logprobs) == 6 and
          len(lp.text_offset) == 6, f"completion logprobs: one entry per token ({lp})")
    check(all(t <= 0 for t in lp.token_logprobs) and
          all(1 <= len(top) <= 2 for top in lp.top_logprobs),
          "completion logprobs: log-probabilities, at most 2 alternatives")
    # Greedy: the sampled token is the most likely one.
    check(all(abs(t - max(top.values())) < 1e-4 for t, top in zip(lp.token_logprobs,
                                                                    lp.top_logprobs)),
          "completion logprobs: greedy picks the top alternative")
    check("".join(lp.tokens) == r.choices[0].text, "completion logprobs: tokens spell the text")
    stream = list(c.completions.create(model="model", prompt="Hello world", max_tokens=6,
                                       temperature=0, logprobs=2, stream=True))
    streamed = [t for ch in stream if ch.choices and ch.choices[0].logprobs
                for t in ch.choices[0].logprobs.token_logprobs]
    check(len(streamed) == 6 and all(abs(a - b) < 1e-5 for a, b in
                                     zip(streamed, lp.token_logprobs)),
          "completion stream logprobs: the same figures")
    echo = c.completions.create(model="model", prompt="Hello world", max_tokens=2,
                                temperature=0, logprobs=1, echo=True)
    elp = echo.choices[0].logprobs
    check(len(elp.tokens) == echo.usage.prompt_tokens + 2 and elp.token_logprobs[0] is None and
          all(t is not None and t <= 0 for t in elp.token_logprobs[1:]),
          f"echo + logprobs: the prompt's logprobs first ({elp.token_logprobs})")
    chat = c.chat.completions.create(model="model", messages=[{"role": "user", "content": "Hi"}],
                                     max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    check(len(content) == 4 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 and
                                    isinstance(t.bytes, list) for t in content),
          f"chat logprobs: token, logprob, bytes, top_logprobs ({content[:1]})")
    check(abs(content[0].logprob - content[0].top_logprobs[0].logprob) < 1e-4,
          "chat logprobs: greedy picks the top alternative")


def test_errors(server):
    c = server.client()
    try:
        server.client(key="wrong").completions.create(model="model", prompt="x", max_tokens=1)
        check(False, "401 for a wrong token")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "401 for a wrong token (openai.AuthenticationError)")
    try:
        c.completions.create(model="other", prompt="x", max_tokens=1)
        check(False, "404 for an unknown model")
    except openai.NotFoundError as e:
        check(e.body.get("code") == "model_not_found", f"404 for an unknown model: {e.body}")
    try:
        c.completions.create(model="model", prompt="x", max_tokens=1, top_p=1.0000001)
        check(False, "400 for top_p 1.0000001")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "top_p" and "1.0000001" in e.body.get("message", ""),
              f"400 names top_p and quotes 1.0000001: {e.body}")
    p = "/v1/completions"
    error_of(server.raw("POST", p, "{not json"), 400, "body", what="malformed JSON")
    error_of(server.raw("POST", p, "[1, 2]"), 400, "body", what="a body that is not an object")
    error_of(server.raw("POST", p, {"prompt": "x", "temperature": "hot"}), 400, "temperature",
             '"hot"', "wrong type")
    error_of(server.raw("POST", p, {"prompt": "x", "max_tokens": -3}), 400, "max_tokens", "-3",
             "negative max_tokens")
    error_of(server.raw("POST", p, {"prompt": "x", "max_tokens": 10**9}), 400, "max_tokens",
             what="max_tokens beyond max_model_len")
    error_of(server.raw("POST", p, {"prompt": "x", "n": 1000}), 400, "n", "1000", "n too large")
    error_of(server.raw("POST", p, {"prompt": "x", "n": 0}), 400, "n", what="n = 0")
    error_of(server.raw("POST", p, {"prompt": "x", "stop": ["a"] * 100}), 400, "stop",
             what="too many stop strings")
    error_of(server.raw("POST", p, {"prompt": "x", "stop": 5}), 400, "stop", what="stop not text")
    error_of(server.raw("POST", p, {"prompt": [1, 2, 10**6]}), 400, "prompt[2]", "1000000",
             "a token id beyond the vocabulary")
    error_of(server.raw("POST", p, {"prompt": ["a", "b"]}), 400, "prompt", what="a batch")
    error_of(server.raw("POST", p, {"max_tokens": 1}), 400, "prompt", what="no prompt")
    error_of(server.raw("POST", p, {"prompt": "x", "presence_penalty": 0.5}), 400,
             "presence_penalty", what="an unsupported parameter")
    error_of(server.raw("POST", p, {"prompt": "x", "stream_options": {"include_usage": True}}),
             400, "stream_options", what="stream_options without stream")
    error_of(server.raw("POST", p, "[" * 100000 + "]" * 100000), 400, "body",
             what="JSON nested 100000 deep")
    error_of(server.raw("POST", p, {"prompt": "x", "logprobs": 21}), 400, "logprobs", "21",
             "logprobs over 20")
    error_of(server.raw("POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}] * 10000}), 400,
             "messages", "10000", "10k messages")
    error_of(server.raw("POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hello world " * 3000}]}),
             400, "messages", what="a chat prompt over max_model_len")
    error_of(server.raw("POST", p, {"prompt": "Hello world " * 3000}), 400, "prompt",
             what="a completion prompt over max_model_len")
    error_of(server.raw("POST", "/v1/chat/completions", {"messages": [{"role": "wizard",
                                                                         "content": "hi"}]}),
             400, "messages[0].role", '"wizard"', "an unknown role")
    error_of(server.raw("POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
             400, "messages[0].content[0].type", what="an image part")
    error_of(server.raw("POST", "/v1/nothing", {}), 404, what="an unknown path")
    error_of(server.raw("GET", "/v1/completions"), 405, what="GET on a POST endpoint")
    error_of(server.raw("POST", p, '{"prompt": "x"}', {"Content-Encoding": "gzip"}), 415,
             what="a compressed body")
    # A body over --max_request_size: 413 from the headers alone, before the body is read.
    for length, sent in ((10**9, b"{"), (5 << 20, b'{"prompt": "' + b"x" * 65536)):
        conn = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + sent)
        resp = http.client.HTTPResponse(conn)
        resp.begin()
        reply = resp.read().decode("utf-8", "replace")
        conn.close()
        check(resp.status == 413 and '"error"' in reply,
              f"413 for a {length}-byte body: {resp.status} {reply[:100]!r}")
    conn = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                 TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n")
    reply = conn.recv(65536).decode("utf-8", "replace")
    conn.close()
    check(reply.startswith("HTTP/1.1 411"), f"411 for a chunked body: {reply[:60]!r}")
    status, _ = server.raw("GET", "/health", headers={"Authorization": ""})
    check(status == 200, "/health is open without a token")


def test_hostile_connections(server):
    # Slow clients: each sends a byte now and then; the server still answers others at once.
    slow = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\n")
        slow.append(s)
    start = time.time()
    status, _ = server.raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
    check(status == 200 and time.time() - start < 5, "slow clients do not hold the server")
    for s in slow:
        s.close()

    # Garbage on the wire and a half-sent request: answered or dropped, never a crash.
    for junk in (b"\x00\xff" * 1000, b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100000 + b"\r\n\r\n",
                 b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"pro"):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.recv(4096)
        except OSError:
            pass
        s.close()
    check(server.proc.poll() is None and server.raw("GET", "/health")[0] == 200,
          "junk on the wire: the server still serves")


def test_disconnect(server):
    # A client that disconnects mid-stream: its request is cancelled, the gauges return to idle.
    body = json.dumps({"prompt": "Hello", "max_tokens": 2000,
                       "temperature": 0, "stream": True}).encode()
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()
    check(b"data: " in got, "mid-stream: chunks arrived before the disconnect")
    cancelled = None
    for _ in range(100):
        cancelled = server.gauge('gqa_requests_finished_total{finish_reason="cancelled"}')
        if cancelled == 4:
            break
        time.sleep(0.1)
    check(cancelled == 4, f"mid-stream: the 4 requests were cancelled (counted {cancelled})")
    idle = False
    for _ in range(100):
        if server.gauge("gqa_requests_running") == 0 and \
                server.gauge("gqa_kv_cache_usage_ratio") == 0:
            idle = True
            break
        time.sleep(0.1)
    check(idle, "after disconnects the running and KV gauges return to 0 "
                f"(running {server.gauge('gqa_requests_running')}, "
                f"kv {server.gauge('gqa_kv_cache_usage_ratio')})")


def test_unstreamed_disconnect(server):
    """A client that closes its connection while its non-streaming request runs: the request is
    cancelled (counted under finish_reason="cancelled") and the running gauge returns to 0
    within 3 s, long before its 2000 tokens would have been generated."""
    name = 'gqa_requests_finished_total{finish_reason="cancelled"}'
    before = server.gauge(name) or 0
    body = json.dumps({"prompt": "Hello", "max_tokens": 2000, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    running = False
    for _ in range(200):
        running = server.gauge("gqa_requests_running") == 1
        if running:
            break
        time.sleep(0.02)
    s.close()
    closed = time.time()
    cancelled = idle = None
    while time.time() - closed < 3:
        cancelled = server.gauge(name)
        idle = server.gauge("gqa_requests_running") == 0
        if cancelled == before + 1 and idle:
            break
        time.sleep(0.05)
    check(running and cancelled == before + 1 and idle,
          f"non-streaming: a client that leaves cancels its request (running before {running}, "
          f"cancelled {before} -> {cancelled}, idle {idle}, {time.time() - closed:.2f} s)")


def test_overload_and_drain(args, work):
    # One sequence at a time, one waiting: a third concurrent request gets 429.
    # A larger model, so that a 2000-token stream lasts seconds.
    subprocess.run([args.make_checkpoint, f"--out={work / 'slow'}", "--layers=4", "--hidden=256",
                    "--heads=4", "--kv_heads=2", "--intermediate=688", "--vocab=300",
                    "--tokenizer", "--seed=3", "--eos=-1"], check=True, stdout=subprocess.DEVNULL)
    server = Server(args, work, "small", "--max_num_seqs=1", "--max_waiting_requests=1",
                    "--drain_grace_seconds=30", model="slow")
    statuses = []

    def one():
        statuses.append(server.raw("POST", "/v1/completions",
                                   {"prompt": "Hello", "max_tokens": 200, "temperature": 0})[0])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(429 in statuses and 200 in statuses, f"429 when the waiting queue is full: {statuses}")
    test_disconnect(server)
    test_unstreamed_disconnect(server)

    # Draining: /health and new requests get 503 while a stream finishes.
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    conn.request("POST", "/v1/completions",
                 json.dumps({"prompt": "Hello", "max_tokens": 2000, "temperature": 0,
                             "stream": True}),
                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read(20)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    health = server.raw("GET", "/health")[0]
    refused = server.raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
    rest = (first + resp.read()).decode("utf-8", "replace")
    check(health == 503, f"draining: /health 503 (got {health})")
    error_of(refused, 503, what="draining: a new request")
    check(rest.rstrip().endswith("data: [DONE]"), "draining: the open stream finishes")
    server.proc.wait(timeout=60)


def test_tls(args, work):
    """--tls_cert/--tls_key serve HTTPS on the HTTP port too; plain HTTP is refused there."""

    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(args, work, "tls", f"--tls_cert={cert}", f"--tls_key={key}",
                    "--http_connections=2")
    context = ssl.create_default_context(cafile=str(cert))

    def connect():
        return context.wrap_socket(socket.create_connection(("127.0.0.1", server.http_port),
                                                            timeout=10),
                                   server_hostname="127.0.0.1")

    def health():
        sock = connect()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        return reply.decode("utf-8", "replace")

    try:
        header_flood(server, connect, "/health", lambda: health().startswith("HTTP/1.1 200"),
                     "HTTPS port")
        # --http_connections=2: with two connections held, a third gets 503 at once.
        held = [connect() for _ in range(2)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and nothing more for now
        time.sleep(0.3)
        start = time.time()
        busy = health()
        check(busy.startswith("HTTP/1.1 503") and "Retry-After: 1" in busy and
              '"error"' in busy and "busy" in busy and time.time() - start < 3,
              f"every connection busy: 503 at once ({busy[:300]!r})")
        for sock in held:
            sock.close()
        served = False
        for _ in range(50):
            served = health().startswith("HTTP/1.1 200")
            if served:
                break
            time.sleep(0.1)
        check(served, "once connections close, requests are served again")
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{server.http_port}/v1",
                               api_key=TOKEN, max_retries=0, timeout=30,
                               http_client=openai.DefaultHttpxClient(verify=str(cert)))
        r = client.completions.create(model="model", prompt="Hello", max_tokens=3)
        check(len(r.choices) == 1, "TLS: the openai client over https")
        try:
            server.raw("GET", "/health", timeout=5)
            check(False, "TLS: plain HTTP is refused")
        except (OSError, http.client.HTTPException):
            check(True, "TLS: plain HTTP is refused")
    finally:
        server.stop()


def test_loadgen(args, work):
    """gqa-loadgen --http_url drives streaming /v1/completions: every request completes with
    exactly its output length, as over gRPC on the same server; the HTTP run streams (TPOT from
    the chunks' arrival, > 0) and its 4 streams share engine steps (mean batch > 1), also on a
    model without a tokenizer (whose chunks have no text), as on the GPU benchmark's model.
    64 tokens a request: the engine hands events to a delivery thread that merges them while it
    lags, so on a loaded 2-core machine a 16-token request of this tiny model once arrived over
    gRPC as one message (TPOT 0); 64 steps make that implausible."""
    kTokens = 64
    subprocess.run([args.make_checkpoint, f"--out={work / 'no-tokenizer'}", "--layers=1",
                    "--hidden=64", "--heads=4", "--kv_heads=2", "--vocab=300", "--seed=3",
                    "--eos=-1"], check=True, stdout=subprocess.DEVNULL)
    for model in ("model", "no-tokenizer"):
        server = Server(args, work, f"loadgen-{model}", auth=False, model=model)
        try:
            backlog = listen_backlog(server.http_port)
            if backlog is None:
                print("skip the listen backlog check: no ss", flush=True)
            else:
                check(backlog >= 64, f"{model}: HTTP listen backlog {backlog} (httplib's 5 makes "
                                     "a burst of connections wait for a SYN retransmission)")
            reports = {}
            for proto, extra in (("grpc", []), ("http", [f"--http_url=http://127.0.0.1:"
                                                         f"{server.http_port}"])):
                # A second run only where the first streamed nothing apart (TPOT 0) or never
                # batched: on a 2-core machine busy with other builds the delivery thread can lag
                # through all 64 steps of this tiny model and merge them. Broken streaming or
                # batching fails both runs.
                for attempt in (1, 2):
                    out = work / f"{model}-{proto}-{attempt}.json"
                    subprocess.run([args.loadgen, f"--server={server.grpc}", "--concurrency=4",
                                    "--num_requests=8", "--input_len=8",
                                    f"--output_len={kTokens}", f"--metrics_url={server.metrics}",
                                    f"--json={out}", *extra],
                                   check=False, capture_output=True, timeout=120)
                    r = json.loads(out.read_text()) if out.exists() else {}
                    reports[proto] = r
                    if (r.get("tpot_s", {}).get("mean", 0) > 0
                            and r.get("server", {}).get("decode_mean_batch", 0) > 1):
                        break
                    if attempt == 1:
                        print(f"note {model}: gqa-loadgen over {proto}: TPOT 0 or mean batch <= 1 "
                              "on the first run; running it again", flush=True)
            for proto, r in reports.items():
                check(r.get("completed") == 8 and r.get("output_tokens") == 8 * kTokens,
                      f"{model}: gqa-loadgen over {proto}: 8 requests of {kTokens} tokens "
                      f"({ {k: r.get(k) for k in ('completed', 'failed', 'errors', 'output_tokens')} })")
                tpot = r.get("tpot_s", {}).get("mean", 0)
                batch = r.get("server", {}).get("decode_mean_batch", 0)
                check(tpot > 0 and batch > 1,
                      f"{model}: gqa-loadgen over {proto} streams: TPOT {tpot * 1e3:.3f} ms > 0, "
                      f"decode mean batch {batch:.2f} > 1")
        finally:
            server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--server", "--cli", "--make-checkpoint", "--loadgen"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        model = work / "model"
        subprocess.run([args.make_checkpoint, f"--out={model}", "--layers=1", "--hidden=64",
                        "--heads=4", "--kv_heads=2", "--vocab=300", "--tokenizer", "--seed=3",
                        "--eos=-1"], check=True, stdout=subprocess.DEVNULL)
        config_path = model / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        config["chat_template"] = CHATML
        config_path.write_text(json.dumps(config))
        server = Server(args, work, "main")
        try:
            greedy = test_completions(server)
            test_grpc_parity(server, args, greedy)
            test_chat(server)
            test_logprobs(server)
            test_errors(server)
            test_hostile_connections(server)
            test_header_floods(server)
        finally:
            server.stop()
        test_overload_and_drain(args, work)
        test_tls(args, work)
        test_loadgen(args, work)
    print(f"{failures} failures" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
