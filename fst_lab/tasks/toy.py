"""A plumbing task for checks of the slow loop on random-init models (tests, ``gpu/check.py``).

A random model rarely produces a scorable answer, so a real task would give every group the same reward 0
and CISPO no gradient. Here the reward is the parity of the completion's character codes: every group
has reward variance, the group-normalised advantages are non-zero and each step is a real update.
Not registered with :func:`fst_lab.tasks.get_task`: it measures nothing about a policy.

    >>> from fst_lab.tasks.toy import ParityTask
    >>> learner = SlowLearner(tiny_policy(), ParityTask(), population, config)
"""

from __future__ import annotations

from fst_lab.tasks.base import Example, Score


class ParityTask:
    """``n`` doubling questions per split; reward = parity of the answer's character codes."""

    name = "parity"

    def __init__(self, n: int = 8):
        self.n = n

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        exs = [Example(id=f"{split}-{i}", inputs={"question": f"What is {i} + {i}?"}, answer=str(2 * i))
               for i in range(self.n)]
        return exs[:n] if n else exs

    def score(self, example: Example, traj) -> Score:
        return Score(float(sum(map(ord, traj.final_text)) % 2), "parity of the answer's characters")

    def tool_impls(self) -> dict:
        return {}
