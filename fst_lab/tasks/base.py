"""The task protocol: examples by split, and a scorer that returns a reward *and* feedback text.

FST's slow loop learns from the scalar reward; its fast loop (GEPA) learns from the feedback text.
So every task must say not only *whether* an answer was right but *why not*:

    >>> task = get_task("math", level=1, seed=0)
    >>> ex = task.examples("train", 4)[0]
    >>> reward, feedback = task.score(ex, trajectory)      # reward in [0, 1]

Contract (tests hold every built-in task to it):
- ``examples(split, n)`` is deterministic by (seed, split, n); splits are disjoint (no example id and
  no identical inputs shared between train / val / test).
- ``score`` never raises for bad model output: a parse failure is reward 0 with feedback saying so.
- Feedback names the expected answer, what the model produced, and why it was wrong (parse failure,
  wrong value, wrong tool use, over length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One problem. ``inputs`` fill the harness's task template; ``answer`` is the ground truth."""

    id: str
    inputs: dict[str, str]
    answer: Any
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "inputs": dict(self.inputs), "answer": self.answer, "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, d: dict) -> "Example":
        return cls(id=str(d["id"]), inputs=dict(d["inputs"]), answer=d.get("answer"), meta=dict(d.get("meta", {})))


@dataclass(frozen=True)
class Score:
    reward: float
    feedback: str

    def __iter__(self):  # so `reward, feedback = task.score(...)` works
        yield self.reward
        yield self.feedback


class TrajectoryView(Protocol):
    """What a scorer may read of a rollout (``fst_lab.rollout.Trajectory`` provides it). Stated here so
    tasks depend on nothing above them: rollout imports tasks, never the other way round."""

    final_text: str
    messages: list[dict]
    tool_calls: list[dict]
    truncated: bool


@runtime_checkable
class Task(Protocol):
    """What the fast and slow loops need from a task."""

    name: str

    def examples(self, split: str, n: int | None = None) -> list[Example]: ...

    def score(self, example: Example, trajectory: TrajectoryView) -> Score: ...

    def tool_impls(self) -> dict[str, Callable[..., str]]:
        """Python implementations for the tool names a harness may declare (may be empty)."""
        ...


_ANSWER_RE = re.compile(r"answer\s*[:=]\s*(.+)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def answer_key(task: Task, trajectory: TrajectoryView) -> str | None:
    """The answer a rollout gave, normalised so equal answers compare equal; None when none parses.

    A task may define ``answer_key(trajectory)`` (HoVer maps 'not supported' to NOT_SUPPORTED, math
    maps '7.0' to 7); otherwise the 'Answer: X' line, case-folded with its whitespace collapsed."""
    own = getattr(task, "answer_key", None)
    if callable(own):
        return own(trajectory)
    raw = extract_answer(getattr(trajectory, "final_text", "") or "")
    return " ".join(raw.casefold().split()) if raw else None


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last 'Answer: X' line, else the last \\boxed{X}; None if absent."""
    if not text:
        return None
    hits = [h for h in _ANSWER_RE.findall(text) if h.strip()]
    if hits:
        ans = hits[-1].strip().splitlines()[0].strip()
        return ans.strip("*` ").rstrip(".").strip() or None
    boxed = _BOXED_RE.findall(text)
    if boxed:
        return boxed[-1].strip()
    return None


_NUM_RE = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")


def parse_number(text: str | None) -> float | None:
    """First number in ``text`` (commas allowed as thousands separators); None if none."""
    if text is None:
        return None
    m = _NUM_RE.search(text)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    """Class decorator: make a task constructible by name through :func:`get_task`."""

    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def get_task(name: str, **kwargs) -> Task:
    """A task by name (``math``, ``codeio``, ``physics``, ``hover``) with constructor kwargs."""
    import fst_lab.tasks  # noqa: F401  (registers the built-ins)

    if name not in _REGISTRY:
        raise ValueError(f"unknown task '{name}' (available: {sorted(_REGISTRY)})")
    return _REGISTRY[name](**kwargs)


def task_names() -> list[str]:
    import fst_lab.tasks  # noqa: F401

    return sorted(_REGISTRY)
