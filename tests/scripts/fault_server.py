"""A real OpenAI-compatible HTTP server on 127.0.0.1 that misbehaves on purpose (for tests/test_llm_faults.py).

It serves ``POST /v1/chat/completions``. Each request takes the next *mode* from a script (cycling, or
the default when the script runs out) and answers accordingly:

    ok[:TEXT]    200, a well-formed completion whose content is TEXT (default: a fenced new instruction)
    banana       200, a fenced instruction with one more "BANANA" than the previous banana reply
    429 / 500 / 503 / 401 / 400 / 404        that status with an OpenAI-style error body
    timeout      sleeps ``hang_seconds`` before answering (longer than the client's timeout)
    empty        200, content ""
    null         200, content null
    no_choices   200, "choices": []
    wrong_shape  200, a JSON object that is no completion at all
    not_json     200, a body that is not JSON
    html         200, text/html
    long         200, content of ``long_chars`` characters
    drop         closes the connection without a response
    short_body   a Content-Length larger than the body, then closes

Every request is recorded (mode, path, headers, JSON body) so tests can assert retries happened.

    >>> with FaultServer(["429", "429", "ok"]) as srv:
    ...     lm = ReflectionLM("openai/x", api_base=srv.api_base, api_key="sk-test", retry_backoff=0)
    ...     lm("hi"); srv.modes_seen()      # ['429', '429', 'ok']

Run it on its own (``python tests/scripts/fault_server.py 429 500 ok``) to poke at it with curl.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable

DEFAULT_REPLY = "```\nSolve the problem step by step. End with 'Answer: <number>'.\n```"


class FaultServer:
    def __init__(self, script: Iterable[str] = (), *, cycle: bool = False, default: str = "ok",
                 hang_seconds: float = 3.0, long_chars: int = 300_000):
        self.script = list(script)
        self._it = itertools.cycle(self.script) if cycle and self.script else iter(self.script)
        self.default = default
        self.hang_seconds = hang_seconds
        self.long_chars = long_chars
        self.requests: list[dict] = []
        self.bananas = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                mode = server._next_mode()
                with server._lock:
                    server.requests.append({"mode": mode, "path": self.path, "headers": dict(self.headers),
                                            "body": body, "t": time.time()})
                server._answer(self, mode, body)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "x", "object": "model"}]})

            def _send(self, status: int, obj, ctype: str = "application/json", extra: dict | None = None):
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FaultServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ script
    def _next_mode(self) -> str:
        with self._lock:
            return next(self._it, self.default)

    def set_script(self, script: Iterable[str], *, cycle: bool = False, default: str | None = None) -> None:
        with self._lock:
            self.script = list(script)
            self._it = itertools.cycle(self.script) if cycle and self.script else iter(self.script)
            if default is not None:
                self.default = default

    def modes_seen(self) -> list[str]:
        with self._lock:
            return [r["mode"] for r in self.requests]

    # ------------------------------------------------------------------ answers
    @staticmethod
    def completion(content, model: str = "x") -> dict:
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}

    def _answer(self, h, mode: str, body: dict) -> None:
        model = body.get("model", "x") if isinstance(body, dict) else "x"
        if mode.startswith("ok"):
            text = mode.split(":", 1)[1] if ":" in mode else DEFAULT_REPLY
            return h._send(200, self.completion(text, model))
        if mode == "banana":
            with self._lock:
                self.bananas += 1
                n = self.bananas
            return h._send(200, self.completion("```\nAnswer carefully. " + "BANANA " * n + "\n```", model))
        if mode.isdigit():
            status = int(mode)
            err = {"error": {"message": f"injected {status}", "type": "injected_fault", "code": status}}
            extra = {"Retry-After": "0"} if status == 429 else None
            return h._send(status, err, extra=extra)
        if mode == "timeout":
            self._stop.wait(self.hang_seconds)
            try:
                return h._send(200, self.completion("too late", model))
            except OSError:  # the client gave up and closed the socket
                return None
        if mode == "empty":
            return h._send(200, self.completion("", model))
        if mode == "null":
            return h._send(200, self.completion(None, model))
        if mode == "no_choices":
            return h._send(200, {**self.completion("x", model), "choices": []})
        if mode == "wrong_shape":
            return h._send(200, {"hello": "world", "status": "fine"})
        if mode == "not_json":
            return h._send(200, b"this is {not json", ctype="application/json")
        if mode == "html":
            return h._send(200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
        if mode == "long":
            return h._send(200, self.completion("x" * self.long_chars, model))
        if mode == "drop":
            h.close_connection = True
            h.connection.close()
            return None
        if mode == "short_body":
            data = json.dumps(self.completion("cut", model)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data) + 500))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.close()
            return None
        raise ValueError(f"unknown fault mode {mode!r}")


if __name__ == "__main__":  # pragma: no cover - manual poking
    srv = FaultServer(sys.argv[1:] or ["ok"], cycle=True).start()
    print(f"serving {srv.script} at {srv.api_base}/chat/completions; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.close()
