"""A real OpenAI-compatible HTTP server on 127.0.0.1 that replays reflection answers written the way
frontier models answer GEPA's instruction-proposal prompt.

    python tests/scripts/replay_server.py [--port 0]      # prints "READY <port>" once it listens

``fst_lab`` reaches it exactly as it reaches OpenAI: LiteLLM ``openai/<model>`` with
``api_base=http://127.0.0.1:<port>/v1``. Endpoints:

- ``POST /v1/chat/completions``: answers with the next scripted reply (then the default). ``usage``
  counts ~4 characters per token; ``model`` echoes the request, so LiteLLM prices a known model name
  (``openai/gpt-4.1-mini``) from its local cost map.
- ``GET /v1/models``, ``GET /health``.
- ``POST /replay/script`` ``{"answers": [name | text | {"content", "finish_reason"}], "default": ...}``:
  the replies to give, in order (a name picks one of :data:`ANSWERS`).
- ``GET /replay/log``: the requests received (model, prompt length, the prompt's start, which reply).

:data:`ANSWERS` holds the replies: valid proposals for a system prompt, a few-shot YAML block and a
tool description, and malformed ones (a refusal, the text without a fence, a reply cut off inside
its fence at the token limit, a reply that ends right after its opening fence). Stdlib only; one thread per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Replies as frontier models write them to GEPA's prompt ("... Provide the new instructions within ```
# blocks."): a diagnosis in prose, then the new text in a fenced block.
ANSWERS: dict[str, dict] = {
    "system_prompt": {"content": (
        "Looking at the examples, the assistant's replies are long explanations that never reach the point, "
        "and the feedback says every one of them missed the expected keyword.\n\n"
        "**What went wrong**\n"
        "1. The instruction never tells the assistant what the reply must contain.\n"
        "2. There is no constraint on length, so the replies ramble.\n\n"
        "**Improved instruction**\n\n"
        "```\n"
        "You answer every question with exactly one word: BANANA.\n"
        "Do not explain, do not add punctuation, and do not write anything else.\n"
        "```\n\n"
        "This makes the required output explicit and removes the room for rambling.")},
    # The embedded SmolLM2 ignores system prompts but copies demos: this rewrite raises the reward.
    "few_shot_yaml": {"content": (
        "The feedback shows the model answers in full sentences while the task only accepts the keyword. "
        "Small models follow demonstrations far better than instructions, so the best lever is the "
        "few-shot block: two short conversations whose assistant turn is just the keyword.\n\n"
        "Here is the rewritten few-shot YAML, in the same layout as before:\n\n"
        "```yaml\n"
        "- - role: user\n"
        "    content: What is 7 + 1?\n"
        "  - role: assistant\n"
        "    content: BANANA\n"
        "- - role: user\n"
        "    content: Who wrote Hamlet?\n"
        "  - role: assistant\n"
        "    content: BANANA\n"
        "```\n")},
    "tool_description": {"content": (
        "The assistant calls `search` with whole sentences, which returns nothing useful. The description "
        "should say what a good query looks like.\n\n"
        "```text\n"
        "Look up one entity by its exact name (a person, place, work or organisation) and return the facts "
        "known about it. Pass a short name such as 'Marie Curie', never a question or a sentence.\n"
        "```")},
    "refusal": {"content": (
        "I'm sorry, but I can't help with rewriting these instructions. If you have another question, "
        "I'm happy to help.")},
    "no_fence": {"content": (
        "Here is the improved instruction:\n\n"
        "You answer every question with exactly one word: BANANA. Do not explain anything.")},
    "truncated": {"content": (
        "Let me analyse the failures first. In every example the assistant wrote a long derivation and the "
        "feedback says the expected keyword never appeared.\n\n"
        "```\n"
        "You are a precise assistant. For every question, think about what the grader expects and"),
        "finish_reason": "length"},
    # What a small local reflector often answers: an opening fence, then end of text (not the token limit).
    "unclosed": {"content": "```", "finish_reason": "stop"},
}
DEFAULT = {"content": "```\nYou are a helpful assistant.\n```"}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.script: list[dict] = []
        self.default: dict = dict(DEFAULT)
        self.log: list[dict] = []


def _reply(item) -> dict:
    if isinstance(item, str):
        return dict(ANSWERS[item]) if item in ANSWERS else {"content": item}
    if isinstance(item, dict) and "content" in item:
        return dict(item)
    raise ValueError(f"a scripted answer is a name in {sorted(ANSWERS)}, a text, or {{'content': ...}}, got {item!r}")


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the test reads /replay/log instead
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            if self.path == "/health":
                return self._send(200, {"status": "ok"})
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": "replay", "object": "model"}]})
            if self.path == "/replay/log":
                with state.lock:
                    return self._send(200, {"requests": list(state.log)})
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self):
            try:
                body = self._body()
            except json.JSONDecodeError as e:
                return self._send(400, {"error": {"message": f"bad JSON: {e}", "type": "invalid_request_error"}})
            if self.path == "/replay/script":
                try:
                    answers = [_reply(a) for a in body.get("answers", [])]
                    default = _reply(body["default"]) if "default" in body else dict(DEFAULT)
                except (ValueError, KeyError) as e:
                    return self._send(400, {"error": {"message": str(e)}})
                with state.lock:
                    state.script, state.default, state.log = answers, default, []
                return self._send(200, {"answers": len(answers)})
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            messages = body.get("messages") or []
            prompt = "\n".join(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                               for m in messages)
            with state.lock:
                scripted = bool(state.script)
                reply = state.script.pop(0) if scripted else dict(state.default)
                index = len(state.log)
                state.log.append({"model": body.get("model"), "prompt_chars": len(prompt), "prompt_head": prompt[:300],
                                  "scripted": scripted, "reply_head": reply["content"][:80]})
            content = reply["content"]
            p_tok, c_tok = max(1, len(prompt) // 4), max(1, len(content) // 4)
            return self._send(200, {
                "id": f"chatcmpl-replay-{index}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or "replay",
                "choices": [{"index": 0, "finish_reason": reply.get("finish_reason", "stop"),
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}})

    return Handler


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start the server in a background thread; returns it (``server.server_address[1]`` is the port)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(State()))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Replay frontier-style reflection answers over OpenAI's HTTP API.")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed as 'READY <port>')")
    args = ap.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State()))
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
