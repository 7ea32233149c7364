"""The fast loop: GEPA adapter over harnesses, bootstrap demos, fast_step, add_manual.

Reflection calls are deterministic: LiteLLM ``mock_response`` replies, a stub policy, or the real
embedded model decoding greedily (served in-process as ``fst-local/policy``, or over HTTP by
``transformers serve`` on 127.0.0.1 in the last test).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fst_lab.fast import (FastConfig, FastResult, HarnessAdapter, add_manual, fast_step, pareto_layers,
                          select_population)
from fst_lab.harness import Harness, load_named
from fst_lab.lm import ReflectionLM
from fst_lab.models import Generation
from fst_lab.tasks.base import Example, Score

TERSE = ("You are a careful math assistant. Compute the result, then write the final number on its own line "
         "as 'Answer: <number>'.\n")


# ---------------------------------------------------------------------------- helpers
class StubPolicy:
    """A policy stand-in: ``fn(messages, tools) -> text`` decides each reply (no model at all)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def chat_prompt(self, messages, tools=None):
        return json.dumps({"messages": list(messages), "tools": tools})

    def generate_text(self, prompts, **kw):
        self.calls += 1
        out = []
        for p in prompts:
            d = json.loads(p)
            text = self.fn(d["messages"], d["tools"])
            out.append(Generation(text=text, prompt_tokens=len(p) // 4, completion_tokens=len(text) // 4,
                                  finished=True, completion_ids=[1] * max(1, len(text) // 4)))
        return out


class KeywordTask:
    """Reward 1 iff the system prompt says BANANA: lets a tiny random model 'improve' through GEPA."""

    name = "keyword"

    def examples(self, split, n=None):
        return [Example(id=f"{split}-{i}", inputs={"question": f"{split} question {i}"}, answer=i)
                for i in range(n or 6)]

    def score(self, example, traj):
        system = traj.messages[0]["content"] if traj.messages and traj.messages[0]["role"] == "system" else ""
        if "BANANA" in system:
            return Score(1.0, "Correct.")
        return Score(0.0, "Wrong: the instructions never mention the magic word BANANA.")

    def tool_impls(self):
        return {}


@pytest.fixture(scope="module")
def tiny():
    from fst_lab.models import tiny_policy

    return tiny_policy(seed=0)


@pytest.fixture(scope="module")
def math_task():
    from fst_lab.tasks import get_task

    return get_task("math", level=1, seed=0)


@pytest.fixture
def math_harness():
    return load_named("math")


def _answers(task):
    return {ex.inputs["question"]: ex.answer for split in ("train", "val") for ex in task.examples(split, 12)}


def _tool_harness(base: Harness) -> Harness:
    d = base.to_dict(with_lineage=False)
    d["tools"] = [{"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}}]
    d["loop"]["max_turns"] = 3
    d["evolvable"] = ["system_prompt", "task_template", "few_shot", "tool_description_calculator"]
    return Harness.from_dict(d)


# ---------------------------------------------------------------------------- config & selection
def test_fast_config_documents_every_field_and_validates():
    import dataclasses

    for f in dataclasses.fields(FastConfig):
        assert f.metadata.get("help"), f"FastConfig.{f.name} has no help text"
    cfg = FastConfig()
    assert cfg.population_size == 4 and "K=4" in FastConfig.__dataclass_fields__["population_size"].metadata["help"]
    assert cfg.reflection_lm == "fst-local/policy" and cfg.budget_passes == 5
    assert cfg.budget(n_train=8, n_val=8) == 40  # 5 passes over the cycle's 8 training examples
    assert FastConfig(max_metric_calls=17).budget(8, 8) == 17
    assert FastConfig(budget_passes=0.1).budget(2, 4) == 4 + 2 * 2  # room for one proposal after the seed
    for bad in ({"population_size": 0}, {"candidate_selection": "best"}, {"bootstrap_every": -1},
                {"max_demos": 0}, {"reflection_lm": "gpt-4"}, {"budget_passes": 0}):
        with pytest.raises(ValueError):
            FastConfig(**bad)
    json.dumps(cfg.to_json())


def test_select_population_keeps_specialists_by_pareto_then_aggregate():
    scores = {
        "generalist": [1, 1, 0, 0],
        "spec_a": [0, 0, 1, 0],  # alone best on instance 2
        "spec_b": [0, 0, 0, 1],  # alone best on instance 3
        "dominated": [1, 0, 0, 0],  # generalist does at least as well everywhere
        "twin": [1, 1, 0, 0],
    }
    ranks = pareto_layers(scores)
    assert ranks["dominated"] == 1 and all(ranks[k] == 0 for k in ("generalist", "spec_a", "spec_b", "twin"))
    assert select_population(scores, 3, prefer=["twin"]) == ["twin", "spec_a", "spec_b"]  # incumbent wins ties
    assert select_population(scores, 5)[-1] == "dominated"
    assert select_population({}, 3) == []


# ---------------------------------------------------------------------------- adapter
def test_adapter_defines_propose_new_texts_so_gepa_uses_it(tiny, math_task, math_harness):
    # GEPA pitfall: an adapter without propose_new_texts makes every proposal fail silently.
    adapter = HarnessAdapter(tiny, math_task, math_harness)
    assert callable(getattr(adapter, "propose_new_texts", None))
    for name in ("evaluate", "make_reflective_dataset", "batch_evaluate"):
        assert callable(getattr(adapter, name))


def test_evaluate_never_raises_on_bad_candidates(math_task, math_harness):
    policy = StubPolicy(lambda msgs, tools: "Answer: 0")
    adapter = HarnessAdapter(policy, math_task, math_harness, max_new_tokens=8)
    batch = math_task.examples("train", 3)
    good = math_harness.to_candidate()
    bad = {
        "few_shot": {**good, "few_shot": "- [unclosed: {yaml"},
        "placeholder": {**good, "task_template": "Solve {problem}\n"},
        "braces": {**good, "task_template": "{question} {\n"},
        "not_a_list": {**good, "few_shot": "just a sentence"},
        "unknown_component": {**good, "nonsense": "x"},
    }
    for name, cand in bad.items():
        before = dict(cand)
        out = adapter.evaluate(batch, cand, capture_traces=True)
        assert out.scores == [0.0, 0.0, 0.0], name
        assert len(out.outputs) == len(out.trajectories) == len(batch)
        assert all("invalid" in t.feedback for t in out.trajectories), name
        assert cand == before  # never mutated
        ds = adapter.make_reflective_dataset(cand, out, ["system_prompt"])
        assert "invalid" in ds["system_prompt"][0]["Feedback"]
    ok = adapter.evaluate(batch, good, capture_traces=False)
    assert len(ok.scores) == 3 and ok.trajectories is None
    assert policy.calls == 1  # invalid candidates cost no rollouts


def test_reflective_dataset_has_rendered_input_full_transcript_and_feedback(math_task, math_harness):
    def agent(msgs, tools):
        assert tools and tools[0]["function"]["name"] == "calculator"
        if msgs[-1]["role"] == "user" and "<tool_response>" not in msgs[-1]["content"] and \
                not any(m["role"] == "tool" for m in msgs):
            return '<tool_call>{"name": "calculator", "arguments": {"expression": "2+"}}</tool_call>'
        if sum(m["role"] == "tool" for m in msgs) == 1:
            return '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
        return "Answer: 5"

    h = _tool_harness(math_harness)
    adapter = HarnessAdapter(StubPolicy(agent), math_task, h)
    ex = math_task.examples("train", 2)
    cand = h.to_candidate()
    assert "tool_description_calculator" in cand
    out = adapter.evaluate(ex, cand, capture_traces=True)
    comps = ["system_prompt", "tool_description_calculator"]
    ds = adapter.make_reflective_dataset(cand, out, comps)
    assert set(ds) == set(comps)
    rec = ds["system_prompt"][0]
    assert set(rec) == {"Inputs", "Generated Outputs", "Feedback"}
    assert rec["Inputs"] == h.render_user(ex[0].inputs)
    gen = rec["Generated Outputs"]
    assert "[tool call] calculator" in gen and "TOOL RESULT" in gen and "Answer: 5" in gen
    assert "ERROR" in gen or "error" in gen.lower()  # the failed first call's observation is shown
    expected = str(ex[0].answer)
    assert expected in rec["Feedback"] and "reward" in rec["Feedback"]


def test_bootstrap_proposal_builds_demos_from_own_train_successes(math_task, math_harness):
    answers = _answers(math_task)
    train, val = math_task.examples("train", 4), math_task.examples("val", 4)
    solved = {train[0].inputs["question"], train[2].inputs["question"], val[0].inputs["question"]}

    def solver(msgs, tools):
        q = msgs[-1]["content"].strip()
        return f"{q.split('.')[0]}.\nAnswer: {answers[q]}" if q in solved else "I am not sure."

    adapter = HarnessAdapter(StubPolicy(solver), math_task, math_harness, bootstrap_every=1, max_demos=2,
                             demo_example_ids=[ex.id for ex in train])
    cand = math_harness.to_candidate()
    adapter.evaluate(val, cand)  # a validation success must never become a demo
    ev = adapter.evaluate(train, cand, capture_traces=True)
    assert ev.scores == [1.0, 0.0, 1.0, 0.0]
    ds = adapter.make_reflective_dataset(cand, ev, ["system_prompt"])
    texts = adapter.propose_new_texts(cand, ds, ["system_prompt"])
    assert list(texts) == ["few_shot"]
    child = math_harness.from_candidate({**cand, **texts}, origin="bootstrap")
    users = [conv[0]["content"] for conv in child.few_shot]
    assert sorted(users) == sorted(math_harness.render_user(train[i].inputs) for i in (0, 2))
    assert all(conv[1]["role"] == "assistant" and "Answer:" in conv[1]["content"] for conv in child.few_shot)
    assert adapter.origin_of({**cand, **texts})[0] == "bootstrap"
    assert adapter.proposals[-1].operator == "bootstrap"
    # Demos already in the parent are not proposed again; with nothing new it reflects instead.
    child_cand = {**cand, **texts}
    adapter.reflection_lm = None
    assert adapter.propose_new_texts(child_cand, ds, ["system_prompt"]) == {}
    assert [p.operator for p in adapter.proposals[-2:]] == ["bootstrap", "reflect"]
    assert adapter.proposals[-2].status == "noop" and adapter.proposals[-1].status == "failed"


# ---------------------------------------------------------------------------- fast_step (tiny model)
def _keyword_population(math_harness):
    seed = math_harness.replace(evolvable=("system_prompt",))
    return seed


def test_fast_step_accepts_a_proposal_and_records_lineage(tiny, math_harness, tmp_path):
    task = KeywordTask()
    seed = _keyword_population(math_harness)
    other = seed.with_components({"system_prompt": "Be helpful.\n"}, origin="manual", round=0)
    events = []
    lm = ReflectionLM("openai/mock-reflector", mock_response="```\nAlways say the word BANANA.\n```")
    cfg = FastConfig(population_size=2, max_new_tokens=2, bootstrap=False, max_metric_calls=20,
                     reflection_minibatch_size=2)
    run = tmp_path / "fast" / "round_0003"
    res = fast_step(tiny, task, [other, seed], task.examples("train", 4), task.examples("val", 3), config=cfg,
                    round=3, reflection_lm=lm, run_dir=run, progress=False, on_event=events.append)
    assert isinstance(res, FastResult)
    # GEPA's pitfall: proposals must not silently stop (a run that 'succeeds' with only the seed).
    assert len(res.candidates) > 1 and res.proposals > 0 and res.accepted >= 1 and not res.errors
    assert res.reflection_calls >= 1 and res.reflection_failures == 0 and res.reflection_tokens > 0
    best = res.best
    assert "BANANA" in best.system_prompt and res.val_scores[best.id] == 1.0
    assert best.lineage.origin == "reflect" and best.lineage.round == 3
    assert best.lineage.parents == (res.seed_id,)
    assert set(res.prev_scores) == {seed.id, other.id} and len(res.population) == 2
    # the seed's GEPA score reuses the re-scoring rollouts: both agree exactly
    assert res.per_instance[res.seed_id] == [0.0, 0.0, 0.0]
    assert {p["status"] for p in res.proposal_log} >= {"accepted"}
    assert any(e["event"] == "accepted" for e in events) and events[-1]["event"] == "done"
    saved = json.loads((run / "fst_fast_result.json").read_text())
    assert saved["best_id"] == best.id and best.id in saved["harnesses"]
    assert (run / "run_log.txt").exists()
    # A second round in the same directory never resumes stale GEPA state: it is moved aside.
    res2 = fast_step(tiny, task, res.population, task.examples("train", 4), task.examples("val", 3),
                     config=FastConfig(population_size=2, max_new_tokens=2, bootstrap=False, max_metric_calls=6),
                     round=4, reflection_lm=lm, run_dir=run, progress=False)
    assert Path(f"{run}.stale-1", "fst_fast_result.json").exists()
    assert res2.prev_scores[best.id] == 1.0 and res2.best_id == best.id  # previous members keep lineage
    assert res2.best.lineage.round == 3


def test_fast_step_survives_reflection_faults(tiny, math_harness):
    import litellm

    task = KeywordTask()
    seed = _keyword_population(math_harness)
    faults = ["litellm.RateLimitError", "litellm.InternalServerError", "litellm.Timeout", "",
              {"choices": []}, "x" * 80_000,
              litellm.ServiceUnavailableError(message="overloaded", llm_provider="openai", model="m"),
              "```\nAlways answer with the word BANANA.\n```"]
    lm = ReflectionLM("openai/flaky-reflector", mock_response=faults, num_retries=0, timeout=0.01, retry_backoff=0)
    cfg = FastConfig(population_size=2, max_new_tokens=2, bootstrap=False, reflection_minibatch_size=2,
                     max_metric_calls=3 + 2 * len(faults) + 2 + 3)
    res = fast_step(tiny, task, [seed], task.examples("train", 4), task.examples("val", 3), config=cfg, round=1,
                    reflection_lm=lm, progress=False)
    assert not res.errors  # every fault was handled inside the proposal, none escaped into GEPA
    assert res.reflection_failures == len(faults) - 1 and res.reflection_calls == len(faults)
    assert res.reflection["failure_kinds"] == {"rate_limit": 1, "server": 2, "timeout": 1, "empty": 1,
                                               "malformed": 1, "too_long": 1}
    assert [p["status"] for p in res.proposal_log] == ["failed"] * (len(faults) - 1) + ["accepted"]
    assert res.accepted == 1 and "BANANA" in res.best.system_prompt


def test_add_manual_lineage_and_population_size(math_harness):
    a = math_harness
    b = a.with_components({"system_prompt": "B\n"}, origin="gepa", round=1)
    c = a.with_components({"system_prompt": "C\n"}, origin="bootstrap", round=1)
    pop = [a, b, c]
    edit = b.with_components({"system_prompt": "B, edited by hand\n"}, origin="gepa")
    new = add_manual(pop, edit, parent=b, round=2, note="tightened wording")
    assert [h.id for h in pop] == [a.id, b.id, c.id]  # the input is untouched
    assert len(new) == 3 and new[:2] == [a, b]  # c (last = worst) made room
    m = new[-1]
    assert (m.lineage.origin, m.lineage.parents, m.lineage.round, m.lineage.note) == (
        "manual", (b.id,), 2, "tightened wording")
    assert m.system_prompt == "B, edited by hand\n" and m.id == m.content_id()
    grown = add_manual(pop, edit, parent=b.id, round=2, max_size=4)
    assert len(grown) == 4 and grown[-1].lineage.origin == "manual"
    # a second manual edit replaces a non-manual member, not the first edit
    edit2 = a.with_components({"system_prompt": "A2\n"}, origin="gepa")
    again = add_manual(new, edit2, round=2)
    assert [h.lineage.origin for h in again] == ["seed", "manual", "manual"] and again[-1].lineage.parents == ()
    assert add_manual(new, m, round=3) == new  # same content: nothing to add


# ---------------------------------------------------------------------------- the embedded model
def test_fast_step_math_embedded_model_with_local_reflector(embedded_policy, math_task, math_harness, tmp_path):
    """The real thing, small: SmolLM2-135M rolls out *and* reflects (``fst-local/policy``)."""
    seed = math_harness.with_components({"system_prompt": TERSE}, origin="manual")
    # Budget 21 = the seed's 6 validation runs + one bootstrap proposal (3 + 3 minibatch + 6 validation)
    # + the parent minibatch of one reflective proposal: both operators run, in well under 90 s.
    cfg = FastConfig(max_metric_calls=21, temperature=0.0, max_new_tokens=48, reflection_max_tokens=96, seed=0)
    t0 = time.time()
    res = fast_step(embedded_policy, math_task, [seed], math_task.examples("train", 6),
                    math_task.examples("val", 6), config=cfg, round=1, run_dir=tmp_path / "round_0001",
                    progress=False)
    elapsed = time.time() - t0
    seed_score = res.prev_scores[seed.id]
    best = res.val_scores[res.best_id]
    print(f"\nmath fast step: seed {seed_score:.3f} -> best {best:.3f}; proposals {res.proposals} "
          f"({res.bootstrap_proposals} bootstrap), accepted {res.accepted}, rejected {res.rejected}; reflection "
          f"{res.reflection_calls} calls, {res.reflection_failures} failed, {res.reflection_tokens} tokens; "
          f"{res.rollouts} rollouts; {elapsed:.1f}s")
    assert best >= seed_score
    assert res.proposals > 0 and res.accepted >= 1 and len(res.candidates) > 1 and not res.errors
    new = [h for h in res.candidates[1:] if h.id != seed.id]
    assert new and all(h.lineage.origin in ("reflect", "bootstrap") and h.lineage.round == 1 for h in new)
    assert any(h.id in {p.id for p in res.population} for h in new)
    assert res.reflection_calls >= 1  # the local reflector was really used (via LiteLLM's custom provider)


# ---------------------------------------------------------------------------- a real server on loopback
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """``transformers serve`` of the converted embedded model on 127.0.0.1 (OpenAI-compatible)."""
    from fst_lab.models import ensure_converted

    model_dir = ensure_converted()
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        pytest.skip("the transformers CLI is not installed in this environment")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu"], stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # ~12 s on an idle machine; generous for a busy CI box
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"transformers serve not ready after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"model": f"openai/{model_dir}", "api_base": base + "/v1"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_fast_step_reflects_through_litellm_over_http(served_model, tiny, math_task, math_harness):
    """Same code path as a frontier API: LiteLLM 'openai/...' over real HTTP to a local server."""
    lm = ReflectionLM(served_model["model"], api_base=served_model["api_base"], api_key="sk-local",
                      max_tokens=48, temperature=0.0, timeout=600, num_retries=1)
    cfg = FastConfig(population_size=2, bootstrap=False, max_new_tokens=4, reflection_minibatch_size=2,
                     max_metric_calls=6)
    res = fast_step(tiny, math_task, [math_harness], math_task.examples("train", 2), math_task.examples("val", 2),
                    config=cfg, round=1, reflection_lm=lm, progress=False)
    assert not res.errors
    assert res.reflection_calls >= 1 and res.reflection_failures == 0
    assert res.reflection["prompt_tokens"] > 100 and res.reflection["completion_tokens"] > 0  # server's usage
    assert res.reflection_cost == 0.0  # an unpriced self-hosted model costs 0, without raising
    first = res.proposal_log[0]
    assert first["operator"] == "reflect" and first["status"] in ("accepted", "rejected", "invalid", "noop")
