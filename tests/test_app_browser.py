"""One real-browser test of the app: headless Chromium submits a task example, two answers stream in,
each with a collapsible tool-call message, and a screenshot is saved to test-artifacts/app_arena.png.

The policy is a *scripted* language model behind the real ``Policy`` class: it answers the way a
model that has learned the harness's few-shot would (a claim -> a ``<tool_call>`` to search; a tool
response -> an answer), and streams its tokens through ``model.generate``'s streamer like any HF
model. Everything else is the real path: chat template, ``rollout_pairs``, the task's search tool,
the scorer, the app. (SmolLM2-135M, the embedded model, answers these prompts with a hallucinated
``<tool_response>`` instead of a call, and takes ~1 min per answer on 2 busy cores.)

Skipped cleanly when Debian's chromium is not installed (``make browser-deps``).
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make browser-deps)")]


def scripted_policy():
    """A Policy whose model calls ``search`` on the claim's subject, then answers from the observation."""
    import torch

    from fst_lab.models import Policy, ensure_converted, load_tokenizer

    tok = load_tokenizer(str(ensure_converted()))

    class ScriptedLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the Policy a device

        def reply(self, prompt: str) -> str:
            turns = [t.split("<|im_end|>", 1)[0].strip() for t in prompt.split("<|im_start|>user")[1:]]
            if turns[-1].startswith("<tool_response>"):  # after the observation: answer from it
                obs = turns[-1].removeprefix("<tool_response>").removesuffix("</tool_response>").strip()
                claim = turns[-2].replace("Claim:", "").strip().rstrip(".")
                verdict = "SUPPORTED" if " ".join(claim.split()[-2:]) in obs else "NOT_SUPPORTED"
                return f"The search result settles it.\nAnswer: {verdict}"
            claim = turns[-1].replace("Claim:", "").strip()
            subject = re.match(r"((?:The )?(?:[A-Z][\w'-]*\s?)+)", claim)
            query = (subject.group(1) if subject else claim).strip()
            return '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>' % query

        def generate(self, input_ids, attention_mask=None, max_new_tokens=64, streamer=None, **kw):
            prompts = tok.batch_decode(input_ids, skip_special_tokens=False)
            outs = [tok(self.reply(p), add_special_tokens=False)["input_ids"][:max_new_tokens - 1] +
                    [tok.eos_token_id] for p in prompts]
            width = max(len(o) for o in outs)
            new = torch.full((len(outs), width), tok.pad_token_id, dtype=torch.long)
            for i, o in enumerate(outs):
                new[i, :len(o)] = torch.tensor(o)
            if streamer is not None:  # token by token, like a real decoder
                streamer.put(input_ids)
                for j in range(width):
                    streamer.put(new[:, j])
                    time.sleep(0.01)
                streamer.end()
            return torch.cat([input_ids, new], dim=1)

    return Policy(model=ScriptedLM(), tokenizer=tok, name="scripted")


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    import app as app_module

    hdir = tmp_path_factory.mktemp("harnesses")
    for name in ("hover", "generic"):  # no run: the arena compares harness files
        shutil.copy(REPO / "harnesses" / f"{name}.yaml", hdir / f"{name}.yaml")
    policy = scripted_policy()
    demo = app_module.build_app(tmp_path_factory.mktemp("runs"), policy_factory=lambda name: policy,
                                harness_dir=hdir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_arena_in_a_real_browser(served_app, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(served_app, wait_until="domcontentloaded")
            # pick a task example from the dropdown (the no-run view lists hover's validation claims)
            page.get_by_label("Input: a task example (scored) or free text").click()
            page.get_by_role("option", name=re.compile("hover-L1-s0-val-0000")).click()
            page.get_by_role("button", name="▶ Run both").click()

            chat_a, chat_b = page.locator("#chat-a"), page.locator("#chat-b")
            for chat in (chat_a, chat_b):  # both answers, each with its tool call and the final answer
                expect(chat.get_by_text(re.compile(r"🔧 search\(query=")).first).to_be_visible(timeout=60_000)
                expect(chat.get_by_text(re.compile(r"Answer: (NOT_)?SUPPORTED")).first).to_be_visible(timeout=60_000)
            expect(page.locator("#score-a")).to_contain_text("feedback", timeout=30_000)
            expect(page.locator("#score-b")).to_contain_text("feedback", timeout=30_000)
            # open one tool call: its observation comes from the task's real search tool
            chat_a.get_by_text(re.compile(r"🔧 search\(")).first.click()
            expect(chat_a.get_by_text(re.compile("Cepark Press: a company")).first).to_be_visible(timeout=10_000)
            page.screenshot(path=str(artifacts_dir / "app_arena.png"), full_page=True)
        finally:
            browser.close()
    assert (artifacts_dir / "app_arena.png").stat().st_size > 10_000
