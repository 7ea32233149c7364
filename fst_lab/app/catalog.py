"""Where the app may read from, and what it may show: run directories under the runs root (through
:mod:`fst_lab.runs`' pure loaders), harness files by name, built-in tasks' examples, redaction.

Every name that comes from the browser or the API goes through :class:`Catalog`; anything outside the
runs root (``../../etc``, an absolute path, a symlink out) is refused with a :class:`RunDirError`.
api_key-like fields are replaced by :data:`REDACTED` in everything shown (:func:`redact`).

    >>> cat = Catalog("runs")
    >>> run = cat.open_run(cat.run_names()[0])          # the newest run
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fst_lab.harness import Harness, HarnessError, default_harness_dir
from fst_lab.runs import RunDirError, RunView, list_runs, load_run, safe_run_path
from fst_lab.ui.render import ORIGIN_MARK

log = logging.getLogger(__name__)

ARENA_EXAMPLES = 20  # validation examples offered in the arena's dropdown
FREE_TEXT = ""  # the example dropdown's value for "type your own input"

# ============================================================================ safety
_SECRET_KEY_RE = re.compile(r"(api[_-]?key|secret|token|passw|credential|authorization|bearer|private[_-]?key)", re.I)
# ...but not fields that *name* where a secret lives (api_key_env: OPENAI_API_KEY) or count tokens
_NOT_SECRET = re.compile(r"(_env|_env_var|_var|_name|_file|_path|_tokens)$", re.I)


class _SecretKey:
    """Field names that hold secrets (``api_key``, ``token``...), not ones that *name* where a secret is."""

    @staticmethod
    def search(key: str) -> bool:
        return bool(_SECRET_KEY_RE.search(key)) and not _NOT_SECRET.search(key)


_SECRET_KEY = _SecretKey()
_SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|xox[abp]-)[A-Za-z0-9_\-]{8,}")
REDACTED = "***redacted***"


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with api_key-like fields (and key-looking strings) replaced by ``***redacted***``."""
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.match(obj.strip()):
        return REDACTED
    return obj


def secret_fields(obj: Any, path: str = "") -> list[str]:
    """Paths of api_key-like fields that hold a value (the Run tab refuses configs that carry keys)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, ""):
                out.append(p)
            else:
                out += secret_fields(v, p)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += secret_fields(v, f"{path}[{i}]")
    elif isinstance(obj, str) and _SECRET_VALUE.match(obj.strip()):
        out.append(path or "<value>")
    return out


_HARNESS_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Catalog:
    """Where the app may read from: run directories under ``runs_root`` and harness files in ``harness_dir``.

    Every name that comes from the browser or the API goes through here; anything outside the runs root
    (``../../etc``, an absolute path, a symlink out) is refused with a :class:`RunDirError`.
    """

    def __init__(self, runs_root: str | Path = "runs", harness_dir: str | Path | None = None):
        self.runs_root = Path(runs_root).resolve()
        self.harness_dir = Path(harness_dir) if harness_dir else default_harness_dir()
        self._harness_files: dict[str, Harness] | None = None

    # ---------------------------------------------------------------- runs
    def run_names(self) -> list[str]:
        """Run directories under the root (newest first), as paths relative to it."""
        out = []
        for p in list_runs(self.runs_root):
            try:
                out.append(str(p.resolve().relative_to(self.runs_root)))
            except ValueError:  # a symlink pointing out of the root: not offered
                continue
        return out

    def open_run(self, name: str) -> RunView:
        """Load a run by its name under the root (pure loaders; refuses paths outside the root)."""
        name = (name or "").strip()
        if not name:
            raise RunDirError("no run selected")
        path = safe_run_path(name, self.runs_root)
        return load_run(path, root=self.runs_root)

    # ---------------------------------------------------------------- harnesses
    def harness_files(self, refresh: bool = False) -> dict[str, Harness]:
        """Harness files by name (``harnesses/*.yaml``); invalid files are skipped with a log line."""
        if self._harness_files is None or refresh:
            out: dict[str, Harness] = {}
            for p in sorted(self.harness_dir.glob("*.yaml")):
                try:
                    out[p.stem] = Harness.load(p)
                except HarnessError as e:
                    log.warning("skipping harness file %s: %s", p, e)
            self._harness_files = out
        return self._harness_files

    def harness_choices(self, run: RunView | None = None, cycle: str | int | None = None
                        ) -> tuple[list[tuple[str, str]], str | None, str | None]:
        """(choices as (label, ref), default A, default B). Refs are ``run:<id>`` or ``file:<name>``.

        With a run: its seed harness and the cycle's population (best first), then the harness files.
        Defaults: A = the seed harness, B = the best evolved member. Without a run: two harness files.
        """
        choices: list[tuple[str, str]] = []
        default_a = default_b = None
        if run is not None:
            rec = run.population_record(parse_cycle(cycle))
            scores = rec.get("scores", {}) or {}
            members = [m["id"] for m in rec.get("members", [])]
            seed = run.seed_harness()
            ids = ([seed.id] if seed is not None and seed.id not in members else []) + \
                sorted(members, key=lambda i: -(scores.get(i) if scores.get(i) is not None else -1.0))
            for hid in ids:
                try:
                    h = run.harness(hid)
                except (RunDirError, HarnessError):
                    continue
                sc = scores.get(hid)
                # short enough to stay readable next to the dropdown's arrow: "● 🧬 gepa math@1a2b3c4d 0.750"
                label = ("● " if hid in members else "") + \
                    f"{ORIGIN_MARK.get(h.lineage.origin, h.lineage.origin)} {h.name}@{hid[:8]}" + \
                    (f" {sc:.3f}" if isinstance(sc, (int, float)) else "")
                choices.append((label, f"run:{hid}"))
            if seed is not None:
                default_a = f"run:{seed.id}"
            best = run.best_harness(parse_cycle(cycle)) if members else None
            evolved = [i for i in ids if i in members and run.harness(i).lineage.origin != "seed"]
            if evolved:
                default_b = f"run:{evolved[0]}"
            elif best is not None:
                default_b = f"run:{best.id}"
            default_a = default_a or default_b
            default_b = default_b or default_a
        files = self.harness_files()
        for name, h in files.items():
            choices.append((f"📄 {name}.yaml", f"file:{name}"))
        if default_a is None and files:
            names = list(files)
            default_a = f"file:{names[0]}"
            default_b = f"file:{names[1] if len(names) > 1 else names[0]}"
        return choices, default_a, default_b

    def resolve_harness(self, ref: str, run: RunView | None = None) -> Harness:
        """A harness from a ``run:<id>`` / ``file:<name>`` ref (ids and names are validated, never joined raw)."""
        ref = (ref or "").strip()
        kind, _, key = ref.partition(":")
        if kind == "run":
            if run is None:
                raise RunDirError(f"harness '{ref}' belongs to a run, but no run is selected")
            if not _HARNESS_ID.match(key):
                raise RunDirError(f"refused: '{key}' is not a harness id")
            return run.harness(key)
        if kind == "file":
            files = self.harness_files()
            if key not in files:
                raise HarnessError(f"no harness file named '{key}' in {self.harness_dir} (have {sorted(files)})")
            return files[key]
        raise HarnessError(f"pick a harness (got {ref!r})")


def parse_cycle(cycle: str | int | None) -> int | None:
    """'latest' / '' / None -> None (the live population); '3' -> 3."""
    if cycle in (None, "", "latest"):
        return None
    try:
        return int(cycle)
    except (TypeError, ValueError):
        raise RunDirError(f"cycle must be 'latest' or a number, got {cycle!r}") from None


def cycle_choices(run: RunView | None) -> list[str]:
    return ["latest"] + [str(c) for c in run.cycles()] if run is not None else ["latest"]


# ============================================================================ tasks & examples
@dataclass(frozen=True)
class TaskSpec:
    name: str
    level: int = 1
    seed: int = 0


def task_spec_for(run: RunView | None, harness: Harness | None = None, default: str = "hover") -> TaskSpec:
    """The task a run trained on (its first stage), else the harness's own task, else ``default``."""
    if run is not None:
        cfg = run.config or {}
        stages = cfg.get("stages") or []
        st = stages[0] if stages and isinstance(stages[0], dict) else {}
        return TaskSpec(str(st.get("task") or cfg.get("task") or default),
                        int(st.get("level") or cfg.get("level") or 1),
                        int(cfg.get("seed") or 0))
    if harness is not None and harness.task:
        return TaskSpec(harness.task)
    return TaskSpec(default)


_TASKS: dict[TaskSpec, Any] = {}
_TASKS_LOCK = threading.Lock()


def get_task_cached(spec: TaskSpec):
    """Built-in tasks only (a task that needs constructor arguments, e.g. a user's jsonl path, is not
    opened by the app: it would read files the run config points at)."""
    from fst_lab.tasks import get_task

    with _TASKS_LOCK:
        if spec not in _TASKS:
            _TASKS[spec] = get_task(spec.name, level=spec.level, seed=spec.seed)
        return _TASKS[spec]


def task_names() -> list[str]:
    from fst_lab.tasks import task_names as names

    return [n for n in names() if n not in ("jsonl", "dataset", "user")]


def example_choices(spec: TaskSpec, n: int = ARENA_EXAMPLES) -> list[tuple[str, str]]:
    """[(label, example id)] of the task's first ``n`` validation examples, after a free-text entry."""
    task = get_task_cached(spec)
    exs = task.examples("val", n)
    out = [("✍️ free text (type below)", FREE_TEXT)]
    for ex in exs:
        first = next(iter(ex.inputs.values()), "")
        first = " ".join(str(first).split())
        out.append((f"{ex.id} · {first[:90]}", ex.id))
    return out


def find_example(spec: TaskSpec, example_id: str, n: int = ARENA_EXAMPLES):
    task = get_task_cached(spec)
    for split in ("val", "test", "train"):
        for ex in task.examples(split, min(n, len(task.examples(split)))):
            if ex.id == example_id:
                return ex
    raise KeyError(f"no example '{example_id}' among the first {n} of task '{spec.name}'")


def free_text_example(harness: Harness, text: str):
    """An unscored example: the text fills the harness's first input (others are left empty)."""
    from fst_lab.tasks.base import Example

    inputs = {name: (text if i == 0 else "") for i, name in enumerate(harness.inputs)}
    return Example(id="free-text", inputs=inputs, answer=None)


class Unscored:
    """A task wrapper for free text: the task's tools still run, but there is nothing to score against."""

    def __init__(self, task):
        self._task = task
        self.name = getattr(task, "name", "free-text")

    def tool_impls(self):
        return self._task.tool_impls() if hasattr(self._task, "tool_impls") else {}

    def score(self, example, trajectory):
        from fst_lab.tasks.base import Score

        return Score(0.0, "free text: no reference answer, so not scored")

    def examples(self, split, n=None):  # pragma: no cover - protocol completeness
        return []


def config_yaml(run: RunView) -> str:
    return yaml.safe_dump(redact(run.config or {}), sort_keys=False)
