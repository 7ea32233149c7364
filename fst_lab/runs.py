"""Run directories: layout and *pure* loaders for notebooks and the app (writing is :mod:`fst_lab.rundir`).

Nothing here imports torch, transformers, TRL or GEPA, and nothing is ever unpickled: loading
someone else's run directory reads only JSON, JSONL and YAML (``yaml.safe_load``).

Layout (human-readable first; JSONL is the source of truth)::

    RUN/
      config.yaml                 the FSTConfig that started the run
      state.json                  counters + live population ids (rewritten atomically at each boundary)
      metrics.jsonl               one JSON object per slow step / fast round / evaluation (fst_lab.records)
      events.jsonl                lifecycle: start, resume, fast, edit, stage, stop, ... (fst_lab.records)
      harnesses/all/<id>.yaml     every harness ever seen (the lineage store), by content id
      harnesses/current/*.yaml    the live population — edit these by hand mid-run
      populations/cycle_0001.yaml population snapshot at the end of each cycle (ids, scores, lineage)
      checkpoints/step_000012/    adapter (safetensors) + optimizer/scheduler/RNG state
      rollouts/*.jsonl            sample trajectories (for the rollout browsers)
      fast/round_0001/            GEPA's own run dir (contains pickles: never loaded by fst_lab's loaders)
      stop                        create this file to stop the run cleanly at the next boundary

    >>> from fst_lab.runs import list_runs, load_run
    >>> run = load_run("runs/demo")
    >>> run.metrics[-1], run.population()[0].system_prompt
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fst_lab import records
from fst_lab.errors import FstLabError
from fst_lab.harness import Harness, HarnessError
from fst_lab.records import running_max  # noqa: F401  (re-exported: readers import it from here)

# The layout (shared with fst_lab.rundir, the writer; nothing else spells a path inside a run).
STATE = "state.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
CONFIG = "config.yaml"
STOP = "stop"
HARNESSES_ALL = "harnesses/all"
HARNESSES_CURRENT = "harnesses/current"
POPULATIONS = "populations"
CHECKPOINTS = "checkpoints"
ROLLOUTS = "rollouts"
FAST = "fast"
FAST_RESULT = "fst_fast_result.json"  # a GEPA round's result: fast/round_NNNN/ (fst_lab.fast.fast_step writes it)
# inside a checkpoint after consolidation steps: the phase state and the pre-consolidation (teacher) weights
CONSOLIDATE_DIR = "consolidate"
CONSOLIDATE_STATE = "consolidate_state.json"
TEACHER_WEIGHTS = "teacher.safetensors"

log = logging.getLogger(__name__)


class RunDirError(FstLabError, ValueError):
    """A run directory is missing, outside the allowed root, or unreadable."""


# ---------------------------------------------------------------------------- reads
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete lines of a JSONL file. A torn line (a crash mid-append, possibly mid-character) is skipped
    quietly: it is the last line, or, once a resumed run has appended after it, a fragment in the middle
    (``rundir.append_jsonl``). Any other line that is not a JSON object (a hand edit gone wrong) is skipped too,
    with one warning naming its file and line."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, encoding="utf-8", errors="replace") as f:  # a torn multi-byte character must not sink the file
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if not _torn(line, err):
                    _warn_once(p, lineno, f"not JSON ({err.msg}, column {err.colno})")
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                _warn_once(p, lineno, f"a JSON {type(obj).__name__}, not an object")
    return out


# What a JSON value cut short can end in, from where the decoder stopped: a literal or a number, begun.
_CUT_LITERAL = re.compile(r"t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|-?[0-9.eE+-]*")
_WARNED: set[tuple[str, int, str]] = set()


def _torn(line: str, err: json.JSONDecodeError) -> bool:
    """Whether a line that does not parse is a prefix of one that would: a string or escape left open, or the
    decoder stopping at the end of the line or inside a value's first characters."""
    if err.msg.startswith(("Unterminated string", "Invalid \\uXXXX")):
        return True
    return _CUT_LITERAL.fullmatch(line[err.pos:]) is not None


def _warn_once(path: Path, lineno: int, what: str) -> None:
    key = (str(path), lineno, what)
    if key not in _WARNED:  # readers poll (the dashboard): say it once, not at every refresh
        _WARNED.add(key)
        log.warning("%s:%d: skipped a line that is %s", path, lineno, what)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    p = Path(path)
    if not p.exists():
        return default
    return json.loads(p.read_text(encoding="utf-8"))


def consolidation_steps(checkpoint: str | os.PathLike) -> int:
    """Consolidation steps of a checkpoint's current phase (0: none since its RL step, or no complete state)."""
    d = Path(checkpoint) / CONSOLIDATE_DIR
    meta = read_json(d / CONSOLIDATE_STATE)
    try:
        return int(meta.get("steps_done", 0)) if isinstance(meta, dict) and (d / TEACHER_WEIGHTS).exists() else 0
    except (TypeError, ValueError):
        return 0


def safe_run_path(run: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Resolve ``run`` inside ``root``; refuse anything outside it (``../../etc``, symlinks out)."""
    root_r = Path(root).resolve()
    cand = Path(run)
    if not cand.is_absolute():
        cand = root_r / cand
    resolved = cand.resolve()
    if resolved != root_r and root_r not in resolved.parents:
        raise RunDirError(f"refused: '{run}' is outside the runs root '{root_r}'")
    return resolved


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / CONFIG).exists() and ((p / EVENTS).exists() or (p / STATE).exists())


def list_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Run directories directly (or one level) under ``root``, newest first."""
    root = Path(root)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    for sub in root.iterdir():
        if sub.is_dir() and not is_run_dir(sub):
            found += [p for p in sub.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


@dataclass
class RunView:
    """A read-only view of a run directory (no training imports, no pickles)."""

    path: Path
    config: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def harness(self, hid: str) -> Harness:
        if not isinstance(hid, str) or not hid or not all(c.isalnum() or c in "_-" for c in hid):
            raise RunDirError(f"refused: {hid!r} is not a harness id")  # ids are content hashes, never paths
        p = self.path / HARNESSES_ALL / f"{hid}.yaml"
        if not p.exists():
            raise RunDirError(f"{self.path}: no harness with id {hid}")
        return Harness.load(p)

    def all_harnesses(self) -> dict[str, Harness]:
        out = {}
        for p in sorted((self.path / HARNESSES_ALL).glob("*.yaml")):
            try:
                h = Harness.load(p)
            except HarnessError:
                continue
            out[p.stem] = h
        return out

    def cycles(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / POPULATIONS).glob("cycle_*.yaml"))

    def population_record(self, cycle: int | None = None) -> dict:
        """The population snapshot of a cycle (latest if None): ids, scores, lineage."""
        if cycle is None:
            ids = self.state.get("population", [])
            return {"cycle": self.state.get("cycle", 0), "members": [{"id": i} for i in ids],
                    "scores": self.state.get("population_scores", {})}
        p = self.path / POPULATIONS / f"cycle_{cycle:04d}.yaml"
        if not p.exists():
            raise RunDirError(f"{self.path}: no population for cycle {cycle} (have {self.cycles()})")
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}

    def population(self, cycle: int | None = None) -> list[Harness]:
        rec = self.population_record(cycle)
        return [self.harness(m["id"]) for m in rec.get("members", [])]

    def seed_harness(self) -> Harness | None:
        for h in self.all_harnesses().values():
            if h.lineage.origin == "seed":
                return h
        return None

    def best_harness(self, cycle: int | None = None) -> Harness | None:
        """The best-scored member (members not evaluated rank last, as in the session; the first if none is)."""
        rec = self.population_record(cycle)
        members = rec.get("members", [])
        if not members:
            return None
        scores = rec.get("scores", {}) or {}

        def score(m: dict) -> float:
            s = scores.get(m["id"], m.get("score"))
            return float("-inf") if s is None else s

        best = max(members, key=score)  # max keeps the first of equals
        return self.harness(best["id"])

    def lineage_edges(self) -> list[dict]:
        """[{id, name, origin, round, parents}] for every harness of the run."""
        return [{"id": hid, "name": h.name, "origin": h.lineage.origin, "round": h.lineage.round,
                 "parents": list(h.lineage.parents), "note": h.lineage.note}
                for hid, h in self.all_harnesses().items()]

    def fast_rounds(self) -> list[dict]:
        """Every GEPA round's result (``fast/round_NNNN/fst_fast_result.json``), oldest first; a round moved
        aside as stale (``round_NNNN.stale-1``: scores from other weights) is not one of them."""
        out = []
        for d in sorted((self.path / FAST).glob("round_*")):
            if not re.fullmatch(r"round_\d+", d.name):
                continue
            try:
                res = read_json(d / FAST_RESULT, None)
            except ValueError:  # a half-written or foreign file: that round is unreadable, the run is not
                continue
            if isinstance(res, dict):
                out.append(res)
        return out

    def proposals(self) -> list[dict]:
        """Every proposal of every GEPA round, oldest first, each with its ``round``: ``operator`` (``reflect`` |
        ``bootstrap``), ``status`` (accepted | rejected | invalid | noop | failed | error), ``detail``, ``reason``
        (why an invalid one was unusable; absent in older logs), tokens."""
        return [{**p, "round": r.get("round")} for r in self.fast_rounds()
                for p in r.get("proposal_log") or [] if isinstance(p, dict)]

    def latest_checkpoint(self) -> Path | None:
        name = self.state.get("checkpoint")
        if name and (self.path / CHECKPOINTS / name).exists():
            return self.path / CHECKPOINTS / name
        return None

    def series(self, kind: str, key: str, x: str = "samples") -> tuple[list, list]:
        """(xs, ys) of metric ``key`` over records of ``kind`` (see :func:`fst_lab.records.series`)."""
        return records.series(self.metrics, kind, key, x)

    def rollouts(self, limit: int = 200) -> list[dict]:
        """Up to ``limit`` saved trajectories, newest source first."""
        out: list[dict] = []
        for source in rollout_sources(self.path):
            out.extend(read_rollouts(self.path, source))
            if len(out) >= limit:
                break
        return out[:limit]


def rollout_sources(run_dir: str | os.PathLike) -> list[str]:
    """Names of the run's saved rollout files (``slow_000003.jsonl``, ``eval_0002.jsonl``, ...), newest
    first (the step number in the name breaks mtime ties within a second)."""
    d = Path(run_dir) / ROLLOUTS
    if not d.is_dir():
        return []
    return [p.name for p in sorted(d.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)]


def read_rollouts(run_dir: str | os.PathLike, source: str) -> list[dict]:
    """The trajectories of one rollout file named by :func:`rollout_sources` (a bare name, never a path)."""
    if not isinstance(source, str) or "/" in source or "\\" in source or source.startswith("."):
        raise RunDirError(f"refused: {source!r} is not a rollout file name")
    return read_jsonl(Path(run_dir) / ROLLOUTS / source)


def load_run(path: str | os.PathLike, root: str | os.PathLike | None = None) -> RunView:
    """Read a run directory (optionally confined to ``root``). Pure: JSON/YAML only."""
    p = safe_run_path(path, root) if root is not None else Path(path)
    if not p.exists():
        raise RunDirError(f"no run directory at {p}")
    if not (p / CONFIG).exists():
        raise RunDirError(f"{p} is not a run directory (no {CONFIG})")
    # An unreadable config/state (bad YAML or JSON, python tags that safe_load refuses, not UTF-8, not a
    # mapping) is a RunDirError like any other unreadable run: callers (the app) catch that one type.
    try:
        config = yaml.safe_load((p / CONFIG).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise RunDirError(_yaml_error(p / CONFIG, e)) from None
    try:
        state = read_json(p / STATE, {}) or {}
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"{p / STATE}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise RunDirError(f"{p}: {CONFIG} and {STATE} must each hold a mapping")
    return RunView(path=p, config=config, state=state, metrics=records.normalize_all(read_jsonl(p / METRICS)),
                   events=read_jsonl(p / EVENTS))


def _yaml_error(path: Path, e: Exception) -> str:
    """One line: ``<file>:<line>: invalid YAML: <problem>`` (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if isinstance(e, yaml.YAMLError) and problem:
        return f"{path}:{mark.line + 1}: invalid YAML: {problem}" if mark else f"{path}: invalid YAML: {problem}"
    return f"{path}: unreadable ({type(e).__name__}: {' '.join(str(e).split())})"


def score_text(score: float | None) -> str:
    """How every view shows a harness score: ``0.562``, or ``not evaluated`` (e.g. a fresh hand edit)."""
    return "not evaluated" if score is None else f"{score:.3f}"
