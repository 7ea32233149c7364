"""The app in a real browser (headless Chromium): the arena streams two answers with tool calls, and
what a user sees is true — the app opens on the newest run with its result line, step buttons are
disabled without a session, a fast step's progress line moves while it runs, the diff header follows
a cycle change, and free text typed in the arena is what both harnesses answer.

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
            page.get_by_role("button", name="▶ Ask both").click()

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


# ---------------------------------------------------------------------------- a run, a tiny trainable policy
TRAIN_CONFIG = """\
mode: fst
task: math
cycles: 1
steps_per_cycle: 1
population_size: 2
num_generations: 2
prompts_per_step: 1
fast_train_size: 2
fast_val_size: 2
eval_size: 2
eval_every_cycle: false
max_new_tokens: 8
fast: {max_metric_calls: 6, reflection_max_tokens: 8, reflection_minibatch_size: 1, reflection_retries: 0}
slow: {learning_rate: 0.001}
run_name: browser-train
"""


@pytest.fixture(scope="module")
def run_app(tmp_path_factory):
    """Two runs (the newer evaluated and ablated, then hand-edited) and the app over them, with a tiny
    random policy for everything (sessions started from the Train tab included)."""
    import app as app_module
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy

    from fst_lab.session import Session

    root = tmp_path_factory.mktemp("runs")
    for name in ("older", "newer"):
        cfg = FSTConfig(mode="fst", task="hover", level=1, cycles=1, steps_per_cycle=1, schedule="w",
                        population_size=2, num_generations=2, prompts_per_step=1, eval_size=2, max_new_tokens=8,
                        slow={"learning_rate": 1e-3}, runs_root=str(root), run_name=name, seed=0)
        s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
        s.run()  # w -> evaluate -> populations/cycle_0001.yaml
        if name == "newer":
            s.channel_ablation()
            s.edit_harness(0, {"system_prompt": "Search every entity first.\nEnd with 'Answer: SUPPORTED' or "
                                                "'Answer: NOT_SUPPORTED'.\n"}, note="hand edit")
        s.close()
        time.sleep(1.1)  # distinct mtimes: "newer" is the newest run
    demo = app_module.build_app(root, policy_factory=lambda name: tiny_policy(seed=0))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}/", "root": root, "demo": demo}
    steering = demo.fst["steering"]
    if steering.session is not None:
        steering.stop()
        steering.runner.wait(120)
    demo.close()


@pytest.fixture
def page(run_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1200})
            pg.goto(run_app["url"], wait_until="domcontentloaded")
            yield pg
        finally:
            browser.close()


def test_opens_on_the_newest_run_with_its_result(page, run_app):
    from playwright.sync_api import expect

    status = page.locator("#run-status")
    expect(status).to_contain_text("newer", timeout=30_000)
    expect(status).to_contain_text(re.compile(r"validation \d\.\d{3} → \d\.\d{3}"))
    expect(status).to_contain_text("ablation base+seed")
    assert page.locator("#run-picker input").input_value() == "newer"


def test_step_buttons_are_disabled_without_a_session(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    for elem in ("#fast-btn", "#slow-btn", "#run-btn", "#pause-btn", "#stop-btn"):
        expect(page.locator(elem)).to_be_disabled(timeout=10_000)
    expect(page.locator("#train-progress")).to_contain_text("no session")


def test_diff_header_follows_a_cycle_change(page, run_app):
    from playwright.sync_api import expect

    from fst_lab.runs import load_run

    run = load_run(run_app["root"] / "newer")
    seed = run.seed_harness()
    edited = [h for h in run.population() if h.lineage.origin == "manual"][0]
    page.get_by_role("tab", name="Evolution").click()
    diff = page.locator("#diff-view")
    expect(diff).to_contain_text(f"B: {edited.name}@{edited.id}", timeout=30_000)
    page.get_by_label("Cycle (population snapshot)").click()
    page.get_by_role("option", name="1", exact=True).click()
    # cycle 1 was snapshotted before the hand edit: A and B are both the seed harness now
    expect(diff).to_contain_text(f"B: {seed.name}@{seed.id}", timeout=30_000)
    expect(diff).not_to_contain_text(edited.id)


def test_free_text_wins_over_a_selected_example(page):
    from playwright.sync_api import expect

    expect(page.locator("#run-status")).to_contain_text("newer", timeout=30_000)
    page.get_by_label("Input: a task example (scored) or free text").click()
    page.get_by_role("option", name=re.compile("hover-L1-s0-val-0000")).click()
    question = "Is the Eiffel Tower in Rome?"
    page.locator("#free-text textarea").fill(question)
    page.get_by_role("button", name="▶ Ask both").click()
    for side in ("#chat-a", "#chat-b"):
        expect(page.locator(side)).to_contain_text(question, timeout=120_000)
    for side in ("#score-a", "#score-b"):
        expect(page.locator(side)).to_contain_text("not scored", timeout=120_000)


def test_fast_step_progress_moves_while_it_runs(page, artifacts_dir):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    page.locator(".cm-content").first.fill(TRAIN_CONFIG)
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#train-message")).to_contain_text("session started", timeout=120_000)
    expect(page.locator("#fast-btn")).to_be_enabled(timeout=10_000)
    expect(page.locator("#run-picker input")).to_have_value("browser-train", timeout=10_000)  # follows the live run
    page.locator("#fast-btn").click()
    seen: list[str] = []
    deadline = time.time() + 300
    while time.time() < deadline:
        text = page.locator("#train-progress").inner_text()
        if "—" in text and (not seen or seen[-1] != text):
            seen.append(text)
        if "fast step (GEPA round" in page.locator("#train-message").inner_text():
            break
        time.sleep(0.05)
    # Within a poll of the step's end, every view agrees with it: the seed's GEPA score in the live lineage,
    # the round in the run summary, the fast record in the log.
    expect(page.locator("#live-lineage")).to_contain_text("score 0.000", timeout=10_000)
    expect(page.locator("#run-status")).to_contain_text("GEPA rounds 1", timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "app_train.png"), full_page=True)
    assert "fast step (GEPA round 1)" in page.locator("#train-message").inner_text()
    assert len(seen) >= 2, seen
    assert any("GEPA metric calls" in t for t in seen), seen
    expect(page.locator("#train-progress")).to_contain_text("idle", timeout=10_000)
