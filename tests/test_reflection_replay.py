"""Frontier-style reflection, end to end: a fast step whose reflection LM is a real HTTP server.

``tests/scripts/replay_server.py`` listens on 127.0.0.1 and replays answers written the way frontier
models answer GEPA's instruction-proposal prompt (prose, then the new text in a fenced block; a
few-shot YAML rewrite; a tool-description rewrite) and malformed ones (a refusal, the text without
a fence, a reply cut off inside its fence). The fast step reaches it exactly as it reaches OpenAI:
``FastConfig(reflection_lm="openai/gpt-4.1-mini", api_base=..., api_key_env=...)`` through LiteLLM.

What must hold: a valid fenced proposal that raises validation reward is accepted and recorded with
origin ``reflect`` and the reflector's tokens and cost; every malformed answer becomes a logged
rejected (``invalid``) proposal, never a crash and never a harness made of the refusal's text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fst_lab.fast import FastConfig, extract_proposal, fast_step
from fst_lab.harness import Harness, few_shot_from_text
from fst_lab.tasks.base import Example, Score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "scripts"))
from replay_server import ANSWERS  # noqa: E402

KEY_ENV = "FST_REPLAY_API_KEY"
MODEL = "openai/gpt-4.1-mini"  # a name LiteLLM prices from its local cost map: cost > 0


class KeywordTask:
    """Reward 1 iff the policy's *reply* contains BANANA; records the system prompts it scored."""

    name = "keyword"

    def __init__(self):
        self.seen_system: list[str] = []

    def examples(self, split, n=None):
        qs = ["What is 2 + 3?", "Is the sky green?", "Name a prime number.", "What is 10 - 4?",
              "Who painted the Mona Lisa?", "How many legs has a spider?"]
        off = 0 if split == "train" else 4
        return [Example(id=f"{split}-{i}", inputs={"question": qs[(i + off) % len(qs)]}, answer="BANANA")
                for i in range(n or 4)]

    def score(self, example, traj):
        if traj.messages and traj.messages[0]["role"] == "system":
            self.seen_system.append(traj.messages[0]["content"])
        if "BANANA" in traj.final_text:
            return Score(1.0, "Correct: the reply is the keyword.")
        return Score(0.0, f"Wrong: the expected reply is the single keyword BANANA, got {traj.final_text[:40]!r}.")

    def tool_impls(self):
        return {"search": lambda query: f"nothing is known about {query}"}


@pytest.fixture(scope="module")
def replay_server():
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "scripts" / "replay_server.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"replay server did not start: {line!r}"
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _script(base: str, answers: list) -> None:
    assert _post(base + "/replay/script", {"answers": answers})["answers"] == len(answers)


def _log(base: str) -> list[dict]:
    with urllib.request.urlopen(base + "/replay/log", timeout=10) as r:
        return json.loads(r.read())["requests"]


def _config(base: str, **kw) -> FastConfig:
    return FastConfig(reflection_lm=MODEL, api_base=base + "/v1", api_key_env=KEY_ENV, reflection_retries=0,
                      reflection_timeout=30, population_size=2, bootstrap=False, reflection_minibatch_size=2,
                      max_new_tokens=6, temperature=0.0, **kw)


# ---------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("name,expected", [
    ("system_prompt", "You answer every question with exactly one word: BANANA.\nDo not explain, do not add "
                      "punctuation, and do not write anything else."),
    ("tool_description", ANSWERS["tool_description"]["content"].split("```text\n")[1].split("\n```")[0]),
    ("refusal", None), ("no_fence", None), ("truncated", None), ("unclosed", None)])
def test_extract_proposal_on_frontier_style_answers(name, expected):
    text, why = extract_proposal(ANSWERS[name]["content"])
    assert text == expected
    if expected is None:
        assert why and ("never closed" in why if name in ("truncated", "unclosed") else "no fenced" in why)


def test_extract_proposal_edge_cases():
    yaml_text, _ = extract_proposal(ANSWERS["few_shot_yaml"]["content"])
    assert few_shot_from_text(yaml_text)[0][1] == {"role": "assistant", "content": "BANANA"}
    # the old text quoted first, the new one last: the last block is the proposal
    assert extract_proposal("Old:\n```\nA\n```\nNew:\n```\nB\n```\nDone.") == ("B", "")
    # fences inside an indented YAML block scalar are part of the text, not the end of the answer
    nested = "```yaml\n- - role: user\n    content: |\n      ```python\n      print(1)\n      ```\n```\n"
    text, _ = extract_proposal(nested)
    assert text.endswith("      ```") and "print(1)" in text
    # a longer fence lets the text hold ``` lines of its own
    assert extract_proposal("````\nuse ```code``` blocks\n```\nend\n````") == ("use ```code``` blocks\n```\nend", "")
    assert extract_proposal("```\n\n```")[0] is None
    assert extract_proposal("~~~\nTilde fenced.\n~~~") == ("Tilde fenced.", "")
    # an unclosed fence: the caller's knowledge of the finish reason names the cause (or says it can't)
    assert "cut off at the token limit:" in extract_proposal("```\nA", cut_off=True)[1]
    assert "ended inside" in extract_proposal("```\nA", cut_off=False)[1]
    assert "(cut off at the token limit?)" in extract_proposal("```\nA")[1]


# ---------------------------------------------------------------------------- end to end over HTTP
def test_frontier_reflection_raises_reward_and_malformed_answers_are_logged(replay_server, embedded_policy,
                                                                            monkeypatch, tmp_path):
    """Few-shot YAML rewrite (the embedded model copies demos) after three malformed answers."""
    monkeypatch.setenv(KEY_ENV, "sk-replay-not-a-real-key")
    task = KeywordTask()
    seed = Harness.load(REPO / "harnesses" / "math.yaml").with_components(
        {"system_prompt": "You are a helpful assistant.\n", "few_shot": "[]"}, origin="manual", round=0)
    seed = seed.replace(evolvable=("few_shot",))
    _script(replay_server, ["refusal", "no_fence", "truncated", "unclosed", "few_shot_yaml"])
    events: list[dict] = []
    # budget: seed on val (2) + 4 x parent minibatch (2) + parent (2) + child (2) + child on val (2) = 16
    res = fast_step(embedded_policy, task, [seed], task.examples("train", 4), task.examples("val", 2),
                    config=_config(replay_server, max_metric_calls=16), round=1, run_dir=tmp_path / "round_0001",
                    progress=False, on_event=events.append)

    requests = _log(replay_server)
    assert len(requests) == 5 and all(r["model"] == "gpt-4.1-mini" and r["scripted"] for r in requests)
    assert all("I provided an assistant with the following instructions" in r["prompt_head"] for r in requests)
    assert not res.errors  # nothing escaped into GEPA
    log = res.proposal_log
    assert [p["operator"] for p in log] == ["reflect"] * 5
    assert [p["status"] for p in log] == ["invalid"] * 4 + ["accepted"], log
    assert "no fenced" in log[0]["detail"] and "can't help" in log[0]["detail"]  # the refusal, quoted
    assert "no fenced" in log[1]["detail"]
    # The provider's finish reason tells a reply cut off at max_tokens from one that ended inside its fence.
    assert "cut off at the token limit" in log[2]["detail"] and "never closed" in log[2]["detail"]
    assert "ended inside its fenced block" in log[3]["detail"] and "token limit" not in log[3]["detail"]
    # Each invalid proposal also records why in a word or three, the vocabulary reports count by.
    assert [p["reason"] for p in log] == ["no fenced block", "no fenced block", "cut off at the token limit",
                                          "reply ended inside its fence", ""]
    assert all(p["reflection_tokens"] > 0 and p["reflection_cost"] > 0 for p in log)
    assert res.invalid_proposals == 4 and res.accepted == 1 and res.reflection_calls == 5
    assert res.reflection_failures == 0  # the calls succeeded; the answers were unusable
    assert res.reflection_tokens == sum(p["reflection_tokens"] for p in log)
    assert res.reflection_cost == pytest.approx(sum(p["reflection_cost"] for p in log)) and res.reflection_cost > 0
    assert [e["event"] for e in events if e["event"].startswith("proposal_")] == ["proposal_invalid"] * 4

    best = res.best
    assert best.id != seed.id and best.lineage.origin == "reflect" and best.lineage.parents == (seed.id,)
    assert [m["content"] for conv in best.few_shot for m in conv if m["role"] == "assistant"] == ["BANANA"] * 2
    assert res.prev_scores[seed.id] == 0.0 and res.val_scores[best.id] == 1.0  # validation reward went up
    assert best.system_prompt == seed.system_prompt  # only the proposed component changed
    saved = json.loads((tmp_path / "round_0001" / "fst_fast_result.json").read_text())
    assert [p["status"] for p in saved["proposal_log"]] == ["invalid"] * 4 + ["accepted"]
    assert saved["population"][0]["origin"] == "reflect"


def test_system_prompt_and_tool_description_rewrites_are_evaluated(replay_server, tiny_policy, monkeypatch):
    """Prose + fenced system prompt, and a tool description with a language tag: both become candidates
    that GEPA evaluates (the tiny random model can't use them, so GEPA may reject them on reward)."""
    monkeypatch.setenv(KEY_ENV, "sk-replay-not-a-real-key")
    task = KeywordTask()
    seed = Harness.load(REPO / "harnesses" / "generic.yaml").replace(
        evolvable=("system_prompt", "tool_description_search"))
    _script(replay_server, ["system_prompt", "tool_description"])
    res = fast_step(tiny_policy, task, [seed], task.examples("train", 4), task.examples("val", 2),
                    config=_config(replay_server, max_metric_calls=2 + 2 * 4), round=1, progress=False)
    assert not res.errors and len(_log(replay_server)) == 2
    log = res.proposal_log
    assert [p["components"] for p in log] == [["system_prompt"], ["tool_description_search"]]
    assert all(p["status"] in ("accepted", "rejected") for p in log), log  # evaluated, not dropped
    new_prompt = extract_proposal(ANSWERS["system_prompt"]["content"])[0] + "\n"
    assert new_prompt in task.seen_system  # the child really ran with the fenced text, prose stripped
    assert all(p["reflection_cost"] > 0 for p in log)
