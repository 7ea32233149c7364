"""Rollouts: run harness x policy x examples, multi-turn with tools, and score each trajectory.

    >>> trajs = rollout(policy, harness, task.examples("val", 8), task, n_samples=2)
    >>> trajs[0].reward, trajs[0].feedback, trajs[0].transcript()

Everything is batched across (harness, example, sample) triples: one ``generate`` call per turn for
all still-active conversations, so a multi-turn tool loop costs one Python round-trip per *turn*, not
per example. Different rollouts may use different harnesses (the slow loop spreads a problem's G
rollouts over K harnesses), hence :func:`rollout_pairs`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

from fst_lab.tools import ParseResult, ToolRegistry, parse_tool_calls

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.harness import Harness
    from fst_lab.models import Policy
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """One model call: the exact prompt text, and the completion (ids for RL)."""

    prompt: str
    completion: str
    completion_ids: list[int] = field(default_factory=list, repr=False)
    prompt_tokens: int = 0
    finished: bool = True


@dataclass
class Trajectory:
    """A whole episode: messages (incl. tool calls and observations), final answer, reward, feedback."""

    example_id: str
    harness_id: str
    sample: int
    messages: list[dict]
    n_prompt_messages: int  # messages[:n] came from the harness; the rest were generated / observed
    final_text: str = ""
    reward: float = 0.0
    feedback: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: list[Turn] = field(default_factory=list, repr=False)
    tool_calls: list[dict] = field(default_factory=list)  # {name, arguments, observation, error}
    truncated: bool = False  # the last turn hit max_new_tokens before EOS
    seconds: float = 0.0
    error: str | None = None  # scorer or rollout failure (reward is 0 then)

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    def transcript(self, max_chars: int = 6000) -> str:
        """The generated part as readable text: what the reflection LM reads."""
        parts = []
        for m in self.messages[self.n_prompt_messages:]:
            if m["role"] == "assistant":
                txt = m.get("content") or ""
                for c in m.get("tool_calls") or []:
                    txt += f"\n[tool call] {c['function']['name']}({c['function'].get('arguments')})"
                parts.append(f"ASSISTANT: {txt.strip()}")
            elif m["role"] == "tool":
                parts.append(f"TOOL RESULT: {m.get('content', '')}")
            else:
                parts.append(f"{m['role'].upper()}: {m.get('content', '')}")
        text = "\n".join(parts)
        if len(text) > max_chars:
            text = text[: max_chars // 2] + "\n...[middle elided]...\n" + text[-max_chars // 2:]
        return text

    def to_json(self) -> dict:
        d = asdict(self)
        d["turns"] = [{"prompt_tokens": t.prompt_tokens, "completion_tokens": len(t.completion_ids),
                       "finished": t.finished} for t in self.turns]
        return d


@dataclass
class _State:
    harness: "Harness"
    example: "Example"
    traj: Trajectory
    registry: ToolRegistry
    done: bool = False


def rollout(policy: "Policy", harness: "Harness", examples: Sequence["Example"], task: "Task | None" = None, *,
            n_samples: int = 1, temperature: float | None = None, max_new_tokens: int | None = None,
            seed: int | None = None, batch_size: int = 16, with_system: bool = True) -> list[Trajectory]:
    """Run one harness on examples, ``n_samples`` each (example-major order). Scored if ``task``."""
    pairs = [(harness, ex) for ex in examples for _ in range(n_samples)]
    return rollout_pairs(policy, pairs, task, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         batch_size=batch_size, with_system=with_system)


def rollout_pairs(policy: "Policy", pairs: Sequence[tuple["Harness", "Example"]], task: "Task | None" = None, *,
                  temperature: float | None = None, max_new_tokens: int | None = None, seed: int | None = None,
                  batch_size: int = 16, with_system: bool = True) -> list[Trajectory]:
    """Run each (harness, example) pair once, batched across pairs and turn by turn."""
    t0 = time.time()
    impls = task.tool_impls() if task is not None and hasattr(task, "tool_impls") else {}
    states: list[_State] = []
    sample_idx: dict[tuple[str, str], int] = {}
    for h, ex in pairs:
        key = (h.id, ex.id)
        k = sample_idx.get(key, 0)
        sample_idx[key] = k + 1
        messages, _ = h.render(ex.inputs, with_system=with_system)
        traj = Trajectory(example_id=ex.id, harness_id=h.id, sample=k, messages=messages,
                          n_prompt_messages=len(messages))
        states.append(_State(h, ex, traj, ToolRegistry(impls, list(h.tools))))

    turn = 0
    while True:
        active = [s for s in states if not s.done]
        if not active:
            break
        # Group by sampling settings so one generate call serves each group.
        groups: dict[tuple, list[_State]] = {}
        for s in active:
            temp = s.harness.loop.temperature if temperature is None else temperature
            mnt = s.harness.loop.max_new_tokens if max_new_tokens is None else max_new_tokens
            groups.setdefault((temp, mnt), []).append(s)
        for (temp, mnt), group in groups.items():
            prompts = [policy.chat_prompt(s.traj.messages, list(s.harness.tools) or None) for s in group]
            gens = policy.generate_text(prompts, max_new_tokens=mnt, temperature=temp,
                                        seed=None if seed is None else seed + turn, batch_size=batch_size)
            for s, prompt, g in zip(group, prompts, gens):
                s.traj.turns.append(Turn(prompt=prompt, completion=g.text, completion_ids=g.completion_ids,
                                         prompt_tokens=g.prompt_tokens, finished=g.finished))
                s.traj.prompt_tokens += g.prompt_tokens
                s.traj.completion_tokens += g.completion_tokens
                _advance(s, g.text, g.finished)
        turn += 1

    elapsed = time.time() - t0
    for s in states:
        s.traj.seconds = elapsed / max(1, len(states))
        if task is not None:
            score_trajectory(task, s.example, s.traj)
    return [s.traj for s in states]


def _advance(s: _State, text: str, finished: bool) -> None:
    """Append the model's turn; run its tool calls (if the harness declares tools) or finish."""
    traj = s.traj
    parsed: ParseResult = parse_tool_calls(text) if s.harness.tools else ParseResult()
    can_continue = len(traj.turns) < s.harness.loop.max_turns
    if parsed.attempted:
        calls = [s.registry.run(c) for c in parsed.calls]
        msg = {"role": "assistant", "content": text, "tool_calls": [c.to_message_call() for c in calls]}
        traj.messages.append(msg)
        for c in calls:
            traj.tool_calls.append({"name": c.name, "arguments": c.arguments, "observation": c.observation,
                                    "error": c.error})
            traj.messages.append({"role": "tool", "name": c.name, "tool_call_id": c.id, "content": c.observation})
        for err in parsed.errors:
            obs = f"ERROR: {err}. Call tools as <tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>"
            traj.tool_calls.append({"name": None, "arguments": None, "observation": obs, "error": err})
            traj.messages.append({"role": "tool", "name": "error", "tool_call_id": "", "content": obs})
        traj.final_text = text
        traj.truncated = not finished
        s.done = not can_continue
        return
    traj.messages.append({"role": "assistant", "content": text})
    traj.final_text = text
    traj.truncated = not finished
    s.done = True


def score_trajectory(task: "Task", example: "Example", traj: Trajectory) -> Trajectory:
    """Fill reward/feedback; a scorer that raises scores 0 and says why (it never kills the run)."""
    try:
        reward, feedback = task.score(example, traj)
        reward = float(reward)
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward {reward} outside [0, 1]")
    except Exception as e:
        log.warning("scorer of %s failed on %s: %s", getattr(task, "name", task), example.id, e)
        reward, feedback = 0.0, f"Scoring failed ({type(e).__name__}: {e}); counted as wrong."
        traj.error = f"score: {e}"
    traj.reward, traj.feedback = reward, feedback
    return traj
