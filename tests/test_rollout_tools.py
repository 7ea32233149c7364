"""The multi-turn tool loop with the real embedded model: a tool call is parsed, executed, and its
observation fed back into the next turn; malformed calls, unknown tools and tools that raise become
error observations instead of crashes.

The model is SmolLM2-135M-Instruct with greedy decoding. A few-shot demonstration makes it copy a
call pattern (correct, unknown tool, or malformed JSON), so each path of the loop is exercised by a
real generation. All four conversations run in one batched ``rollout_pairs`` call to keep this cheap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fst_lab.harness import Harness, LoopSettings
from fst_lab.rollout import rollout_pairs
from fst_lab.tasks.hover import HoverTask
from fst_lab.tools import ToolCall, ToolRegistry, parse_tool_calls


class _SearchFailsFor(HoverTask):
    """HoVer whose search tool raises for one entity (an outage the loop must survive)."""

    def __init__(self, broken: str, **kw):
        super().__init__(**kw)
        self.broken = broken

    def tool_impls(self):
        search = self.corpus.search

        def flaky(query: str) -> str:
            if self.broken.lower() in query.lower():
                raise ConnectionError("encyclopedia index offline")
            return search(query)

        return {"search": flaky}


def _variant(base: Harness, call_template: str) -> Harness:
    """The seed hover harness with its few-shot tool calls rewritten to ``call_template``."""
    data = base.to_dict(with_lineage=False)
    for conv in data["few_shot"]:
        entity = conv[0]["content"].removeprefix("Claim: ").split(" was ")[0].split(" is ")[0]
        conv[1]["content"] = call_template.replace("ENTITY", entity)
    return Harness.from_dict(data, source="<test variant>")


@pytest.fixture(scope="module")
def tool_rollouts(embedded_policy):
    seed = Harness.load(Path(__file__).resolve().parent.parent / "harnesses" / "hover.yaml")
    seed = seed.replace(loop=LoopSettings(max_turns=2, max_new_tokens=32, temperature=0.0))
    task = _SearchFailsFor(broken="", level=1, seed=0, n_train=4, n_val=4, n_test=4)
    exs = task.examples("val")
    task.broken = exs[3].meta["chain"][0]
    pairs = [
        (seed, exs[0]),
        (_variant(seed, '{"name": "lookup", "arguments": {"query": "ENTITY"}}'), exs[1]),
        (_variant(seed, '{"name": "search", "arguments": {"query": "ENTITY",}}'), exs[2]),  # trailing comma
        (seed, exs[3]),
    ]
    return task, exs, rollout_pairs(embedded_policy, pairs, task, temperature=0.0)


def test_tool_call_is_executed_and_observation_fed_back(tool_rollouts):
    task, exs, trajs = tool_rollouts
    t = trajs[0]
    assert t.tool_calls, t.transcript()
    call = t.tool_calls[0]
    entity = exs[0].meta["chain"][0]
    assert call["name"] == "search" and call["error"] is None
    assert entity.lower() in call["arguments"]["query"].lower()
    assert call["observation"] == task.corpus.search(call["arguments"]["query"])
    assert entity in call["observation"]
    # the message list holds the call and its observation, and the model was called again with it
    gen = t.messages[t.n_prompt_messages:]
    assert gen[0]["role"] == "assistant" and gen[0]["tool_calls"][0]["function"]["name"] == "search"
    assert gen[1] == {"role": "tool", "name": "search", "tool_call_id": "call_0", "content": call["observation"]}
    assert t.n_turns == 2 and call["observation"] in t.turns[1].prompt
    assert gen[-1]["role"] == "assistant"
    assert "search tool was called" in t.feedback and 0.0 <= t.reward <= 1.0


def test_unknown_tool_becomes_error_observation(tool_rollouts):
    _, _, trajs = tool_rollouts
    t = trajs[1]
    assert t.tool_calls, t.transcript()
    call = t.tool_calls[0]
    assert call["name"] == "lookup" and "unknown tool 'lookup'" in call["error"]
    assert call["observation"].startswith("ERROR: unknown tool 'lookup'; available: ['search']")
    assert t.n_turns == 2 and call["observation"] in t.turns[1].prompt
    assert "tool errors" in t.feedback.lower()


def test_malformed_call_becomes_error_observation(tool_rollouts):
    _, _, trajs = tool_rollouts
    t = trajs[2]
    assert t.tool_calls, t.transcript()
    call = t.tool_calls[0]
    assert call["name"] is None and "could not parse tool call" in call["error"]
    assert "<tool_call>" in call["observation"]  # the error tells the model the right format
    tool_msgs = [m for m in t.messages[t.n_prompt_messages:] if m["role"] == "tool"]
    assert tool_msgs and tool_msgs[0]["content"] == call["observation"]
    assert t.n_turns == 2 and call["observation"] in t.turns[1].prompt


def test_raising_tool_becomes_error_observation(tool_rollouts):
    task, exs, trajs = tool_rollouts
    t = trajs[3]
    assert t.tool_calls, t.transcript()
    call = t.tool_calls[0]
    assert call["name"] == "search"
    assert call["error"] == "tool 'search' failed: ConnectionError: encyclopedia index offline"
    assert call["observation"] == "ERROR: " + call["error"]
    assert t.n_turns == 2 and call["observation"] in t.turns[1].prompt
    assert t.error is None  # the rollout itself did not fail


# The same three failure paths, deterministically, at the registry level (no model).
def test_registry_error_paths():
    task = HoverTask(level=1, seed=0, n_train=2, n_val=2, n_test=2)
    seed_tools = [{"type": "function", "function": {"name": "search", "description": "d", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
    reg = ToolRegistry(task.tool_impls(), seed_tools)
    parsed = parse_tool_calls('<tool_call>{"name": "search", "arguments": {"query": Oops}}</tool_call>')
    assert not parsed.calls and "could not parse tool call" in parsed.errors[0]
    assert "unknown tool" in reg.run(ToolCall("lookup", {"query": "x"})).observation
    assert "missing ['query']" in reg.run(ToolCall("search", {})).observation
    ok = reg.run(ToolCall("search", {"query": "zzzz qqqq"}))
    assert ok.error is None and ok.observation == "No results for 'zzzz qqqq'."
    boom = ToolRegistry({"search": lambda query: 1 / 0}, seed_tools).run(ToolCall("search", {"query": "x"}))
    assert boom.observation == "ERROR: tool 'search' failed: ZeroDivisionError: division by zero"
