"""``codeio``: predict what a small Python program prints (CodeIO-style, offline, generated).

Programs come from templates (arithmetic, strings, lists, loops, functions); the ground truth is
what each program *actually prints*, found by running it in :mod:`fst_lab.sandbox` at generation time.
All candidate programs of a task run in one sandboxed process (about a second for a few hundred), and
outputs are cached per program text for the life of the Python process.

    >>> task = get_task("codeio", level=2, seed=0)
    >>> ex = task.examples("val", 1)[0]
    >>> print(ex.inputs["question"]); print(ex.answer)
    total = 0
    for i in range(4):
        total += i
    print(total)
    6

Levels:
  1  one-liners: ``print(2 + 3)``, ``print(len("apple"))``, ``print("ab" * 2)``
  2  a few lines: a loop, slicing, a list method, an if/else
  3  functions, nested loops, while loops, dict counting
  4  several of the above composed, recursion, comprehensions with conditions

Scoring: the ``Answer:`` line must equal the printed output after whitespace is normalised
(outer quotes and backticks around the answer are tolerated when the output itself has none).
"""

from __future__ import annotations

import random
import re

from fst_lab.tasks.base import Score, extract_answer, register_task
from fst_lab.tasks.common import _FILL_ORDER, GeneratedTask, length_note, missing_answer_feedback

_WORDS = ["apple", "banana", "python", "kernel", "rocket", "planet", "garden", "silver", "orange", "window",
          "puzzle", "marble", "coffee", "dragon", "forest", "lemon", "river", "tiger", "pixel", "stone"]
_OUTPUT_CACHE: dict[str, tuple[str | None, str | None]] = {}  # program -> (stdout, error)


def _nums(rng: random.Random, k: int, lo: int = 1, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _level1(rng: random.Random) -> str:
    a, b, c = _nums(rng, 3)
    w, w2 = rng.choice(_WORDS), rng.choice(_WORDS)
    return rng.choice([
        f"print({a} + {b})", f"print({a} * {b})", f"print({a + b} - {b})", f'print("{w[:2]}" * {min(a, 4)})',
        f'print(len("{w}"))', f'print("{w}".upper())', f"print(max({a}, {b}, {c}))", f"print(min({a}, {b}, {c}))",
        f"x = {a}\nprint(x + {b})", f'print("{w}" + "{w2}")', f'print("{w}"[0])', f"print({a * b} // {b})",
    ])


def _level2(rng: random.Random) -> str:
    a, b, c, d = _nums(rng, 4)
    n = rng.randint(2, 7)
    w = rng.choice(_WORDS)
    nums = _nums(rng, rng.randint(3, 5), 1, 20)
    ch = rng.choice(w)
    return rng.choice([
        f"total = 0\nfor i in range({n}):\n    total += i\nprint(total)",
        f's = "{w}"\nprint(s[::-1])',
        f"nums = {nums}\nprint(sum(nums))",
        f"nums = {nums}\nprint([x * {a} for x in nums])",
        f"nums = {nums}\nprint(nums[{rng.randint(-len(nums), len(nums) - 1)}])",
        f'count = 0\nfor ch in "{w}":\n    if ch == "{ch}":\n        count += 1\nprint(count)',
        f"x = {a * 3}\nif x > {b * 2}:\n    print(\"big\")\nelse:\n    print(\"small\")",
        f"nums = {nums}\nnums.append({c})\nprint(len(nums))",
        f"nums = {nums}\nprint(sorted(nums))",
        f's = "{w}"\nprint(s[{rng.randint(0, 2)}:{rng.randint(3, 5)}])',
        f"x = {a}\nx = x * {b}\nx = x - {c}\nprint(x)",
        f'words = ["{w}", "{rng.choice(_WORDS)}"]\nprint("-".join(words))',
        f"print({a} ** {min(d, 3)} % {b + 1})",
    ])


def _level3(rng: random.Random) -> str:
    a, b, c = _nums(rng, 3)
    w = rng.choice(_WORDS)
    ch = rng.choice(w)
    nums = _nums(rng, rng.randint(4, 6), 1, 30)
    return rng.choice([
        f"def f(x):\n    return x * {a} + {b}\n\nprint(f({c}))",
        f"n = {rng.randint(3, 12)}\nsteps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
        f"    steps += 1\nprint(steps)",
        f"total = 0\nfor i in range({rng.randint(2, 4)}):\n    for j in range({rng.randint(2, 4)}):\n"
        f"        total += i * j\nprint(total)",
        f'd = {{}}\nfor ch in "{w}":\n    d[ch] = d.get(ch, 0) + 1\nprint(d["{ch}"])',
        f"nums = {nums}\nnums.append({a * 5})\nnums.sort()\nprint(nums[-2])",
        f"a, b = 0, 1\nfor _ in range({rng.randint(3, 10)}):\n    a, b = b, a + b\nprint(a)",
        f"nums = {nums}\nevens = [x for x in nums if x % 2 == 0]\nprint(len(evens))",
        f'def g(s):\n    return s[-1] + s[1:-1] + s[0]\n\nprint(g("{w}"))',
        f"x = {a}\nfor i in range({rng.randint(2, 4)}):\n    if x % 2 == 0:\n        x = x // 2\n    else:\n"
        f"        x = x + {b}\nprint(x)",
        f"nums = {nums}\nbest = nums[0]\nfor x in nums:\n    if x > best:\n        best = x\nprint(best)",
    ])


def _level4(rng: random.Random) -> str:
    a, b = _nums(rng, 2)
    w1, w2, w3 = rng.sample(_WORDS, 3)
    nums = _nums(rng, rng.randint(5, 7), 1, 40)
    return rng.choice([
        f"def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n\nprint(fact({rng.randint(3, 7)}) % {rng.randint(7, 100)})",
        f'words = ["{w1}", "{w2}", "{w3}"]\nwords.sort(key=len)\nprint(words[0][{rng.randint(0, 3)}] + words[-1][-1])',
        f"nums = {nums}\nprint(sum(x * x for x in nums if x % {rng.randint(2, 4)} == 0))",
        f"def h(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out\n\n"
        f"print(len(h({nums + nums[:2]})))",
        f's = "{w1}{w2}"\nvowels = 0\nfor ch in s:\n    if ch in "aeiou":\n        vowels += 1\nprint(vowels * {a})',
        f"x = {rng.randint(10, 99)}\ndigits = []\nwhile x > 0:\n    digits.append(x % 10)\n    x //= 10\nprint(digits)",
        f"grid = [[i * j for j in range({rng.randint(2, 4)})] for i in range({rng.randint(2, 4)})]\nprint(grid[-1])",
        f'count = {{}}\nfor w in ["{w1}", "{w2}", "{w1}", "{w3}", "{w1}"]:\n    count[w] = count.get(w, 0) + 1\n'
        f'print(max(count, key=count.get), count["{w1}"])',
        f"nums = {nums}\nk = {a}\nprint([x for x in nums if x > k][:{b % 3 + 2}])",
    ])


_TEMPLATES = {1: _level1, 2: _level2, 3: _level3, 4: _level4}


def execute_programs(programs: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """Printed output of each program (run once, cached). One sandboxed process for the whole batch."""
    from fst_lab.sandbox import run_many

    todo = [p for p in dict.fromkeys(programs) if p not in _OUTPUT_CACHE]
    if todo:
        for prog, res in zip(todo, run_many(todo, timeout_each=1.0)):
            _OUTPUT_CACHE[prog] = (res.stdout, None) if res.error is None else (None, res.error)
    return {p: _OUTPUT_CACHE[p] for p in programs}


@register_task("codeio")
class CodeIOTask(GeneratedTask):
    """Predict a program's printed output; see the module docstring."""

    name = "codeio"
    levels = (1, 2, 3, 4)
    answer_format = "End with a line 'Answer: <exactly what the program prints>'."

    def make(self, rng: random.Random, index: int):
        return _TEMPLATES[self.level](rng)

    def build(self):
        # Draw each split's candidates first, run them all in one sandbox process, then fill the splits.
        streams, rngs = {}, {}
        for split in _FILL_ORDER:
            rngs[split] = rng = self.rng(split)
            streams[split] = [self.make(rng, i) for i in range(self.sizes[split] * 2 + 20)]
        outputs = execute_programs([p for progs in streams.values() for p in progs])
        seen: set[str] = set()
        out = {}
        for split in _FILL_ORDER:
            stream = iter(streams[split])

            def draw(i, stream=stream, rng=rngs[split]):
                prog = next(stream, None)
                if prog is None:  # the pre-drawn stream ran dry (many duplicates): draw and run more
                    prog = self.make(rng, i)
                    execute_programs([prog])
                printed, error = _OUTPUT_CACHE[prog]
                if error is not None or printed is None or not printed.strip() or len(printed) > 200:
                    return None
                return prog, printed.strip("\n"), {"printed_lines": printed.count("\n")}

            out[split] = self._fill(split, draw, seen)
        return out

    def score(self, example, trajectory) -> Score:
        expected = str(example.answer)
        text = trajectory.final_text or ""
        note = length_note(trajectory)
        raw = _extract(text)
        if raw is None:
            return Score(0.0, missing_answer_feedback(repr(expected), text, self.answer_format) + note)
        if _same_output(raw, expected):
            return Score(1.0, f"Correct: the program prints {expected!r}.{note}")
        return Score(0.0, f"Wrong output: the program prints {expected!r}, but the answer was {raw!r}. "
                          f"Trace the program line by line and report exactly what print() writes.{note}")


def _extract(text: str) -> str | None:
    """The Answer line; for multi-line outputs, also accept an answer block after 'Answer:'."""
    raw = extract_answer(text)
    if raw is None:
        return None
    m = list(re.finditer(r"answer\s*[:=]\s*", text or "", re.IGNORECASE))
    if m:
        block = text[m[-1].end():].strip()
        fenced = re.match(r"```[a-z]*\n(.*?)```", block, re.DOTALL)
        if fenced:
            return fenced.group(1).strip()
    return raw


def normalise_output(s: str) -> str:
    return " ".join(str(s).split())


def _same_output(answer: str, expected: str) -> bool:
    a, e = normalise_output(answer), normalise_output(expected)
    if a == e:
        return True
    # extract_answer drops a trailing '.', and models like to quote string outputs.
    if a == e.rstrip(".").strip():
        return True
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "'\"`" and e[:1] not in "'\"":
        return normalise_output(a[1:-1]) == e
    return False
