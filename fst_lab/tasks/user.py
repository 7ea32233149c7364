"""Your own task from a JSONL file or a 🤗 ``datasets.Dataset``, scored exactly, numerically, or by your function.

One JSON object per line; ``question`` fills the harness's ``{question}`` and ``answer`` is the truth
(``examples/my_task.jsonl`` is a small sample):

    {"id": "cap-1", "question": "What is the capital of France?", "answer": "Paris"}
    {"id": "cap-2", "question": "What is the capital of Japan?", "answer": "Tokyo", "split": "test"}

    >>> from fst_lab.tasks import get_task, JsonlTask
    >>> task = get_task("jsonl", path="examples/my_task.jsonl", scorer="exact")
    >>> task = JsonlTask.from_jsonl("examples/my_task.jsonl", scorer="numeric", tolerance=0.01)

    >>> def my_scorer(prediction, answer):             # name only the arguments you need
    ...     ok = prediction is not None and answer.lower() in prediction.lower()
    ...     return float(ok), "contains the answer" if ok else f"should mention {answer}"
    >>> task = JsonlTask.from_jsonl("examples/my_task.jsonl", scorer=my_scorer)

    >>> from datasets import Dataset
    >>> task = DatasetTask.from_dataset(Dataset.from_list(rows), scorer="exact")

Scorers:
- ``"exact"``: the ``Answer:`` line equals the answer after case, whitespace, outer quotes and a final
  period are normalised (a list answer means "any of these"). With no ``Answer:`` line, a one-line
  response is taken whole.
- ``"numeric"``: the number in the ``Answer:`` line (after the last ``=``) is within
  ``tolerance + rel_tolerance * |answer|``.
- a callable: called with the keyword arguments it names among ``prediction`` (the extracted answer
  or None), ``answer``, ``example``, ``trajectory`` and ``text`` (the whole final response); returns a
  reward in [0, 1] or ``(reward, feedback)``. If it raises, the rollout scores 0 and records why.

Splits: a ``split`` field (train / val / test; validation and dev mean val) decides, if rows have one.
Otherwise rows are shuffled by a hash of their inputs and ``seed`` and cut by ``ratios``, so the
split is deterministic and identical inputs always land in the same split. Inputs that appear in
two explicit splits are kept only in the later of train < val < test (a warning says so).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fst_lab.errors import FstLabError
from fst_lab.tasks.base import SPLITS, Example, Score, extract_answer, parse_number, register_task

log = logging.getLogger(__name__)

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}
_SCORER_ARGS = ("prediction", "answer", "example", "trajectory", "text")


class TaskDataError(FstLabError, ValueError):
    """A data file or dataset is malformed; the message names the file and line (or row)."""


class UserTask:
    """A task over fixed examples. Build with :meth:`JsonlTask.from_jsonl` or :meth:`DatasetTask.from_dataset`."""

    def __init__(self, splits: dict[str, list[Example]], *, name: str = "user",
                 scorer: str | Callable[..., Any] = "exact", tolerance: float = 1e-6, rel_tolerance: float = 0.0,
                 tools: dict[str, Callable[..., str]] | None = None, source: str = ""):
        if isinstance(scorer, str) and scorer not in ("exact", "numeric"):
            raise ValueError(f"scorer must be 'exact', 'numeric' or a callable, got {scorer!r}")
        if not isinstance(scorer, str) and not callable(scorer):
            raise TypeError(f"scorer must be 'exact', 'numeric' or a callable, got {type(scorer).__name__}")
        self.name = name
        self.scorer = scorer
        self.tolerance, self.rel_tolerance = float(tolerance), float(rel_tolerance)
        self.source = source
        self._splits = {s: list(splits.get(s, [])) for s in SPLITS}
        self._tools = dict(tools or {})

    def __repr__(self) -> str:
        sizes = {s: len(v) for s, v in self._splits.items()}
        return f"{type(self).__name__}(name={self.name!r}, source={self.source!r}, sizes={sizes})"

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' (choose from {list(SPLITS)})")
        exs = self._splits[split]
        if n is not None and n > len(exs):
            log.warning("asked for %d '%s' examples but %s has %d in that split", n, split,
                        self.source or self.name, len(exs))
        return list(exs if n is None else exs[:n])

    def tool_impls(self) -> dict[str, Callable[..., str]]:
        return dict(self._tools)

    # ---------------------------------------------------------------- scoring
    def score(self, example: Example, trajectory) -> Score:
        text = trajectory.final_text or ""
        prediction = extract_answer(text)
        if prediction is None and self.scorer == "exact":
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            if len(lines) == 1:
                prediction = lines[0].strip()
        note = (" The response was cut off at the token limit (over length)."
                if getattr(trajectory, "truncated", False) else "")
        if callable(self.scorer):
            return self._custom(example, trajectory, prediction, text)
        if prediction is None:
            return Score(0.0, f"Parse failure: no 'Answer: ...' line found. Expected {example.answer!r}.{note}")
        if self.scorer == "numeric":
            return self._numeric(example, prediction, note)
        return self._exact(example, prediction, note)

    def _exact(self, example: Example, prediction: str, note: str) -> Score:
        answers = example.answer if isinstance(example.answer, (list, tuple)) else [example.answer]
        got = normalise_text(prediction)
        if any(got == normalise_text(str(a)) for a in answers):
            return Score(1.0, f"Correct: {prediction!r}.{note}")
        want = answers[0] if len(answers) == 1 else " or ".join(map(repr, answers))
        return Score(0.0, f"Wrong answer: expected {want!r}, but the answer was {prediction!r}.{note}")

    def _numeric(self, example: Example, prediction: str, note: str) -> Score:
        try:
            expected = float(example.answer)
        except (TypeError, ValueError):
            raise TaskDataError(f"example {example.id}: answer {example.answer!r} is not a number "
                                f"(scorer='numeric')") from None
        tail = prediction.rsplit("=", 1)[-1] if "=" in prediction else prediction
        got = parse_number(tail) if parse_number(tail) is not None else parse_number(prediction)
        if got is None:
            return Score(0.0, f"Parse failure: the answer {prediction!r} contains no number. "
                              f"Expected {expected:g}.{note}")
        tol = self.tolerance + self.rel_tolerance * abs(expected)
        if abs(got - expected) <= tol:
            return Score(1.0, f"Correct: {got:g}.{note}")
        return Score(0.0, f"Wrong value: expected {expected:g}, but the answer was {got:g} "
                          f"(allowed error {tol:g}).{note}")

    def _custom(self, example: Example, trajectory, prediction: str | None, text: str) -> Score:
        available = {"prediction": prediction, "answer": example.answer, "example": example,
                     "trajectory": trajectory, "text": text}
        out = self.scorer(**_wanted_kwargs(self.scorer, available))
        if isinstance(out, tuple):
            if len(out) != 2:
                raise TypeError(f"scorer returned a {len(out)}-tuple; return reward or (reward, feedback)")
            reward, feedback = float(out[0]), str(out[1])
        else:
            reward = float(out)
            feedback = f"Reward {reward:g}. Expected {example.answer!r}; the answer was {prediction!r}."
        return Score(reward, feedback)


def _wanted_kwargs(fn: Callable, available: dict) -> dict:
    """Only the arguments ``fn`` names (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass the two essentials
        return {"prediction": available["prediction"], "answer": available["answer"]}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(available)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.default is p.empty and p.name not in available]
    if unknown:
        raise TypeError(f"scorer {getattr(fn, '__name__', fn)!r} needs arguments {unknown}; a scorer may take "
                        f"any of {list(_SCORER_ARGS)}")
    return {k: v for k, v in available.items() if k in names}


def normalise_text(s: str) -> str:
    s = " ".join(str(s).split()).casefold()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"`":
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


# -------------------------------------------------------------------- building splits from rows
def _build_splits(rows: Iterable[tuple[str, dict]], *, source: str, input_fields: Sequence[str], answer_field: str,
                  id_field: str | None, split_field: str | None, ratios: Sequence[float], seed: int,
                  default_id: Callable[[str], str], forced_split: dict[str, str] | None = None
                  ) -> dict[str, list[Example]]:
    """rows: (where, record) with ``where`` like 'file.jsonl:12' for error messages."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, val, test), got {ratios!r}")
    items: list[tuple[str | None, Example, str]] = []  # (explicit split, example, where)
    ids: dict[str, str] = {}
    for where, rec in rows:
        if not isinstance(rec, dict):
            raise TaskDataError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
        missing = [f for f in input_fields if f not in rec]
        if missing:
            raise TaskDataError(f"{where}: missing input field(s) {missing} (has {sorted(rec)})")
        if answer_field not in rec:
            raise TaskDataError(f"{where}: missing answer field '{answer_field}' (has {sorted(rec)})")
        ex_id = str(rec[id_field]) if id_field and rec.get(id_field) is not None else default_id(where)
        if ex_id in ids:
            raise TaskDataError(f"{where}: duplicate id '{ex_id}' (first seen at {ids[ex_id]})")
        ids[ex_id] = where
        inputs = {f: rec[f] if isinstance(rec[f], str) else json.dumps(rec[f], ensure_ascii=False)
                  for f in input_fields}
        split = None
        if forced_split is not None:
            split = forced_split.get(where)
        elif split_field and split_field in rec:
            raw = str(rec[split_field]).strip().lower()
            if raw not in _SPLIT_ALIASES:
                raise TaskDataError(f"{where}: unknown split {rec[split_field]!r} in field '{split_field}' "
                                    f"(use train, val or test)")
            split = _SPLIT_ALIASES[raw]
        skip = set(input_fields) | {answer_field, id_field, split_field}
        meta = {k: v for k, v in rec.items() if k not in skip}
        meta["where"] = where
        items.append((split, Example(id=ex_id, inputs=inputs, answer=rec[answer_field], meta=meta), where))

    explicit = [s for s, _, _ in items if s is not None]
    if explicit and len(explicit) != len(items):
        first_missing = next(w for s, _, w in items if s is None)
        raise TaskDataError(f"{first_missing}: no '{split_field}' field, but other rows have one; give every row "
                            f"a split or none")
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if explicit:
        home: dict[str, str] = {}
        order = {"train": 0, "val": 1, "test": 2}
        for split, ex, _ in items:
            key = _inputs_key(ex.inputs)
            if key not in home or order[split] > order[home[key]]:
                home[key] = split
        dropped = 0
        for split, ex, where in items:
            if home[_inputs_key(ex.inputs)] != split:
                dropped += 1
                continue
            out[split].append(ex)
        if dropped:
            log.warning("%s: %d row(s) repeat inputs of a later split and were dropped to keep splits disjoint",
                        source, dropped)
        return out

    # No split field: order distinct inputs by a seeded hash and cut by ratios.
    groups: dict[str, list[Example]] = {}
    for _, ex, _ in items:
        groups.setdefault(_inputs_key(ex.inputs), []).append(ex)
    keys = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}|{k}".encode()).hexdigest())
    n = len(keys)
    total = float(sum(ratios))
    n_val = round(n * ratios[1] / total)
    n_test = round(n * ratios[2] / total)
    if n >= 3:  # every split with a positive ratio gets at least one group
        n_val = max(n_val, 1 if ratios[1] > 0 else 0)
        n_test = max(n_test, 1 if ratios[2] > 0 else 0)
    n_train = max(0, n - n_val - n_test)
    bounds = {"train": keys[:n_train], "val": keys[n_train:n_train + n_val], "test": keys[n_train + n_val:]}
    for split, ks in bounds.items():
        chosen = set(ks)
        # keep file order inside a split
        out[split] = [ex for _, ex, _ in items if _inputs_key(ex.inputs) in chosen]
    return out


def _inputs_key(inputs: dict) -> str:
    return json.dumps(inputs, sort_keys=True, ensure_ascii=False)


class JsonlTask(UserTask):
    """A task read from a JSONL file (see the module docstring)."""

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, scorer: str | Callable[..., Any] = "exact", *,
                   tolerance: float = 1e-6, rel_tolerance: float = 0.0, split_field: str | None = "split",
                   ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                   input_fields: Sequence[str] = ("question",), answer_field: str = "answer",
                   id_field: str | None = "id", name: str | None = None,
                   tools: dict[str, Callable[..., str]] | None = None) -> "JsonlTask":
        path = Path(path)
        if not path.exists():
            raise TaskDataError(f"{path}: file not found")
        rows = []
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark (Windows editors) is dropped
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rows.append((where, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from None
        if not rows:
            raise TaskDataError(f"{path}: no examples (the file is empty)")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
        splits = _build_splits(rows, source=str(path), input_fields=list(input_fields), answer_field=answer_field,
                               id_field=id_field, split_field=split_field, ratios=ratios, seed=seed,
                               default_id=lambda where: f"{stem}-{where.rsplit(':', 1)[1]}")
        return cls(splits, name=name or stem, scorer=scorer, tolerance=tolerance, rel_tolerance=rel_tolerance,
                   tools=tools, source=str(path))


class DatasetTask(UserTask):
    """A task over a 🤗 ``datasets.Dataset`` (split by field or ratios) or ``DatasetDict`` (its own splits)."""

    @classmethod
    def from_dataset(cls, dataset: Any, scorer: str | Callable[..., Any] = "exact", *, tolerance: float = 1e-6,
                     rel_tolerance: float = 0.0, split_field: str | None = "split",
                     ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                     input_fields: Sequence[str] = ("question",), answer_field: str = "answer",
                     id_field: str | None = "id", name: str = "dataset",
                     tools: dict[str, Callable[..., str]] | None = None) -> "DatasetTask":
        rows: list[tuple[str, dict]] = []
        forced: dict[str, str] | None = None
        # A DatasetDict (or a plain dict of row lists) brings its own splits; a Dataset has no keys().
        if hasattr(dataset, "keys") and not hasattr(dataset, "features"):
            forced = {}
            for part in dataset.keys():
                split = _SPLIT_ALIASES.get(str(part).lower())
                if split is None:
                    raise TaskDataError(f"{name}: dataset split '{part}' is not train, validation or test")
                for i, rec in enumerate(dataset[part]):
                    where = f"{name}[{part}] row {i}"
                    rows.append((where, dict(rec)))
                    forced[where] = split
        else:
            rows = [(f"{name} row {i}", dict(rec)) for i, rec in enumerate(dataset)]
        if not rows:
            raise TaskDataError(f"{name}: the dataset has no rows")
        splits = _build_splits(rows, source=name, input_fields=list(input_fields), answer_field=answer_field,
                               id_field=id_field, split_field=split_field, ratios=ratios, seed=seed,
                               default_id=lambda where: f"{name}-" + re.sub(r"\W+", "-", where[len(name):]).strip("-"),
                               forced_split=forced)
        return cls(splits, name=name, scorer=scorer, tolerance=tolerance, rel_tolerance=rel_tolerance,
                   tools=tools, source=name)


@register_task("jsonl")
def _jsonl_task(path: str | os.PathLike, scorer: str | Callable[..., Any] = "exact", *, level: int | None = None,
                **kwargs) -> JsonlTask:
    """``get_task("jsonl", path=..., scorer=...)``: keyword arguments as :meth:`JsonlTask.from_jsonl`.

    ``level`` is accepted (the session passes one to every task) and ignored: a file has no levels.
    """
    return JsonlTask.from_jsonl(path, scorer, **kwargs)
