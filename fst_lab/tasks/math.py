"""``math``: multi-step arithmetic word problems with exact integer answers (offline, generated).

    >>> task = get_task("math", level=2, seed=0)
    >>> task.examples("val", 1)[0].inputs["question"]
    'Maya has 12 shells. She gives 5 shells to a friend. Then she buys 3 bags with 4 shells in each. ...'

Levels (a problem is a start amount followed by operations):
  1  one addition or subtraction, numbers 1-9          ("Tom has 3 apples. He buys 4 more. ...")
  2  two operations, incl. "k bags of b" (a product), numbers up to 20
  3  three operations, adds doubling/tripling and sharing equally, numbers up to 50
  4  four or five operations, numbers up to 200

Scoring: the last ``Answer: <number>`` line (or ``\\boxed{}``) must equal the answer (tolerance 1e-6).
In ``Answer: 3 + 4 = 7`` the value after the last ``=`` counts. Feedback gives the expected value,
what was produced, the worked solution, and whether the response ran out of tokens.
"""

from __future__ import annotations

import random
import re

from fst_lab.tasks.base import Score, extract_answer, parse_number, register_task
from fst_lab.tasks.common import (GeneratedTask, calculator, format_number, length_note,
                                  missing_answer_feedback, python_tool)

_PEOPLE = [("Tom", "he"), ("Maya", "she"), ("Ravi", "he"), ("Lena", "she"), ("Omar", "he"), ("Zoe", "she"),
           ("Sam", "he"), ("Ana", "she"), ("Ben", "he"), ("Ivy", "she"), ("Leo", "he"), ("Nia", "she"),
           ("Max", "he"), ("Eva", "she"), ("Jon", "he"), ("Mia", "she"), ("Kai", "he"), ("Ada", "she")]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "cookies", "stamps", "shells", "cards",
          "balloons", "oranges"]
_FRIENDS = ["a friend", "a neighbour", "a classmate", "a cousin"]

# level -> (number of operations, allowed operations, start range, operand range)
_LEVELS = {
    1: ((1, 1), ("add", "sub"), (1, 9), (1, 9)),
    2: ((2, 2), ("add", "sub", "bags"), (2, 20), (2, 20)),
    3: ((3, 3), ("add", "sub", "bags", "times", "share"), (5, 50), (2, 50)),
    4: ((4, 5), ("add", "sub", "bags", "times", "share"), (20, 200), (2, 200)),
}


def _step(rng: random.Random, op: str, x: int, lo: int, hi: int, p: str, item: str):
    """One operation on the current amount x: (sentence, new amount, worked step) or None if it can't apply."""
    P = p.capitalize()
    if op == "add":
        b = rng.randint(lo, hi)
        s = rng.choice([f"{P} buys {b} more.", f"{P} finds {b} more {item}.",
                        f"{rng.choice(_FRIENDS).capitalize()} gives {'him' if p == 'he' else 'her'} {b} more {item}."])
        return s, x + b, f"{x} + {b} = {x + b}"
    if op == "sub":
        if x < 2:
            return None
        b = rng.randint(1, min(hi, x - 1) if x > 1 else 1)
        s = rng.choice([f"{P} gives {b} {item} to {rng.choice(_FRIENDS)}.", f"{P} loses {b} {item}.",
                        f"{P} sells {b} of them."])
        return s, x - b, f"{x} - {b} = {x - b}"
    if op == "bags":
        k, b = rng.randint(2, 5), rng.randint(2, min(hi, 12))
        return (f"Then {p} buys {k} bags with {b} {item} in each.", x + k * b,
                f"{x} + {k} x {b} = {x} + {k * b} = {x + k * b}")
    if op == "times":
        k = rng.choice([2, 3])
        word = {2: "doubles", 3: "triples"}[k]
        return f"Then {p} {word} the number of {item} {p} has.", x * k, f"{x} x {k} = {x * k}"
    if op == "share":
        ks = [k for k in (2, 3, 4, 5) if x % k == 0 and x // k > 0]
        if not ks:
            return None
        k = rng.choice(ks)
        return (f"{P} splits the {item} equally into {k} boxes and keeps only one box.", x // k,
                f"{x} / {k} = {x // k}")
    raise ValueError(op)


@register_task("math")
class MathTask(GeneratedTask):
    """Arithmetic word problems; see the module docstring for levels and scoring."""

    name = "math"
    levels = (1, 2, 3, 4)
    answer_format = "End with a line 'Answer: <number>'."

    def make(self, rng: random.Random, index: int):
        (nmin, nmax), ops, (slo, shi), (lo, hi) = _LEVELS[self.level]
        name, p = rng.choice(_PEOPLE)
        item = rng.choice(_ITEMS)
        x = rng.randint(slo, shi)
        sentences, steps = [f"{name} has {x} {item}."], []
        n_ops = rng.randint(nmin, nmax)
        while len(steps) < n_ops:
            st = _step(rng, rng.choice(ops), x, lo, hi, p, item)
            if st is None:
                continue
            s, x, worked = st
            sentences.append(s)
            steps.append(worked)
        sentences.append(f"How many {item} does {name} have now?")
        return " ".join(sentences), x, {"solution": "; ".join(steps), "n_steps": len(steps)}

    def tool_impls(self):
        return {"calculator": calculator, "python": python_tool}

    def score(self, example, trajectory) -> Score:
        expected = float(example.answer)
        exp_s = format_number(expected)
        text = trajectory.final_text or ""
        note = length_note(trajectory)
        raw, got = read_answer(text)
        if raw is None:
            return Score(0.0, missing_answer_feedback(exp_s, text, self.answer_format) + note)
        if got is None:
            return Score(0.0, f"Parse failure: the answer line 'Answer: {raw}' contains no number. "
                              f"Expected {exp_s}. {self.answer_format}{note}")
        if abs(got - expected) <= 1e-6:
            return Score(1.0, f"Correct: {exp_s}.{note}")
        sol = example.meta.get("solution")
        return Score(0.0, f"Wrong value: expected {exp_s}, but the answer was {format_number(got)}."
                          + (f" Worked solution: {sol}." if sol else "") + note)

    def answer_key(self, trajectory) -> str | None:
        """The number the scorer reads, formatted ('7.0' and '7' are one answer); None when none parses."""
        got = read_answer(trajectory.final_text or "")[1]
        return None if got is None else format_number(got)


def read_answer(text: str) -> tuple[str | None, float | None]:
    """The answer line's text and the number the scorer reads from it (None where absent / no number)."""
    raw = extract_answer(text)
    return raw, None if raw is None else parse_number(_after_last_equals(raw))


def _after_last_equals(s: str) -> str:
    """In 'Answer: 3 + 4 = 7' the result is what follows the last '='."""
    parts = re.split(r"=", s)
    tail = parts[-1]
    return tail if parse_number(tail) is not None else s
