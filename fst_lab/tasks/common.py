"""What the built-in generated tasks share: seeded, disjoint splits and feedback phrasing.

A generated task only writes ``make(rng)`` (one problem) and ``score``; :class:`GeneratedTask` turns
that into deterministic train/val/test splits. Each split draws from its own random stream (seeded by
task name, level, seed and split), test first, then val, then train, skipping any problem whose
inputs an earlier split already holds. So the test set does not change when ``n_train`` does, and no
two splits share an input.
"""

from __future__ import annotations

import ast
import logging
import math
import operator
import random
from typing import Any, Callable

from fst_lab.tasks.base import SPLITS, Example

log = logging.getLogger(__name__)

# Largest split a generated task makes (far beyond a CPU run's needs; a typo like n_val: 64000000 is refused).
MAX_SPLIT = 100_000

# Fill order: a split's content depends only on the splits filled before it.
_FILL_ORDER = ("test", "val", "train")


class GeneratedTask:
    """Base for offline generated tasks; subclasses set ``name``, ``levels`` and implement ``make``."""

    name: str = "generated"
    levels: tuple[int, ...] = (1, 2, 3)

    def __init__(self, level: int = 1, seed: int = 0, n_train: int = 200, n_val: int = 50, n_test: int = 100):
        if level not in self.levels:
            raise ValueError(f"task '{self.name}' has levels {list(self.levels)}, not {level!r}")
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"n_{split} must be a non-negative integer, got {n!r}")
            if n > MAX_SPLIT:  # generation would run for hours (and give up only after 50 n draws)
                raise ValueError(f"n_{split} must be at most {MAX_SPLIT:,}, got {n:,}")
        self.level, self.seed = level, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._splits: dict[str, list[Example]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level}, seed={self.seed}, sizes={self.sizes})"

    # ---------------------------------------------------------------- to implement
    def make(self, rng: random.Random, index: int) -> tuple[str, Any, dict]:
        """One problem: (question text, answer, meta). ``index`` counts the split's accepted examples
        so far (hover alternates labels with it)."""
        raise NotImplementedError

    def tool_impls(self) -> dict[str, Callable[..., str]]:
        return {}

    # ---------------------------------------------------------------- splits
    def rng(self, split: str) -> random.Random:
        # String seeds hash with SHA-512 inside `random`: stable across runs and Python processes.
        return random.Random(f"{self.name}|level={self.level}|seed={self.seed}|{split}")

    def build(self) -> dict[str, list[Example]]:
        """All three splits (override to batch work across them, as CodeIO does)."""
        seen: set[str] = set()
        out: dict[str, list[Example]] = {}
        for split in _FILL_ORDER:
            rng = self.rng(split)
            out[split] = self._fill(split, lambda i: self.make(rng, i), seen)
        return out

    def _fill(self, split: str, draw: Callable[[int], tuple[str, Any, dict] | None], seen: set[str]) -> list[Example]:
        n = self.sizes[split]
        exs: list[Example] = []
        attempts = 0
        while len(exs) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ValueError(f"task '{self.name}' level {self.level} can't produce {n} distinct {split} "
                                 f"examples (only {len(exs)}); ask for fewer")
            item = draw(len(exs))
            if item is None:
                continue
            question, answer, meta = item
            if question in seen:
                continue
            seen.add(question)
            exs.append(Example(id=f"{self.name}-L{self.level}-s{self.seed}-{split}-{len(exs):04d}",
                               inputs={"question": question}, answer=answer,
                               meta={"level": self.level, **meta}))
        return exs

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of a split (all of it when ``n`` is None or larger than the split)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' (choose from {list(SPLITS)})")
        if self._splits is None:
            self._splits = self.build()
        exs = self._splits[split]
        if n is not None and n > len(exs):
            log.warning("asked for %d '%s' examples of '%s' but the split has %d (construct the task with "
                        "n_%s=%d for more)", n, split, self.name, len(exs), split, n)
        return list(exs if n is None else exs[:n])


# -------------------------------------------------------------------- feedback phrasing
def length_note(trajectory) -> str:
    if getattr(trajectory, "truncated", False):
        return (" The response was cut off at the token limit (over length) before it finished: "
                "reason more briefly and give the answer line earlier.")
    return ""


def missing_answer_feedback(expected: str, text: str, answer_format: str) -> str:
    shown = " ".join((text or "").split())
    shown = shown[-160:] if shown else "(empty response)"
    return (f"Parse failure: no final answer line was found, so the answer could not be graded. "
            f"Expected answer: {expected}. {answer_format} The response ended with: \"{shown}\".")


def format_number(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


# -------------------------------------------------------------------- a safe calculator tool
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, sqrt, abs, round, min, max) without eval()."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
            return _UNOPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")

    tree = ast.parse(str(expression).replace("^", "**"), mode="eval")
    value = ev(tree)
    return format_number(float(value)) if isinstance(value, (int, float)) else str(value)


def python_tool(code: str) -> str:
    """Run Python in the sandbox and return what it printed (or the error)."""
    from fst_lab.sandbox import run_python

    r = run_python(code, timeout=3.0)
    text = r.stdout
    if r.error:
        text += ("\n" if text else "") + f"ERROR: {r.error}"
    return text.strip() or "(no output)"
