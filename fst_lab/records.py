"""Records: every line a run writes to ``metrics.jsonl`` / ``events.jsonl``, and how to read them back.

One module names every record kind and its keys, so writers (the session) and readers (plots, the
report, the dashboard, the app, the benchmarks) agree. Pure Python: no torch, importable anywhere.

Two families of numbers never share a name:

- **cumulative counters** (``COUNTERS``) are in every metrics record and only ever grow during a run:
  ``samples`` (= ``samples_rl`` + ``samples_fast``: every policy rollout that fed learning so far),
  ``rl_step``, ``fast_round``, ``cycle``, ``stage``; consolidation's ``consolidate_step`` and
  ``samples_distill`` (its student rollouts, kept out of ``samples``);
- **per-step figures** belong to one step: a slow record's ``rollouts`` (this step's RL rollouts),
  a fast record's ``rollouts`` (this round's re-scoring + GEPA rollouts), ``reward``, ``loss``, ...

One KL name: ``kl`` is the per-token KL of the policy to the start weights on the fixed probe set
(slow and eval records); TRL's KL on the training batch (beta > 0) is ``kl_train``.

    >>> from fst_lab import records
    >>> recs = records.normalize_all(load_run("runs/demo").metrics)      # load_run already does this
    >>> xs, ys = records.series(recs, "slow", "reward")                   # train reward vs samples
    >>> records.latest(recs, "eval")["reward"]

Old run directories (written before this module) are read through :func:`normalize`, the one place
that maps legacy keys (``kl_probe``, ``kl_to_base``, a slow record's per-step ``samples``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

# ---------------------------------------------------------------------------- the schema
# Metric kinds (metrics.jsonl; field "kind")
SLOW, FAST, EVAL, ABLATION, CONSOLIDATE = "slow", "fast", "eval", "ablation", "consolidate"
METRIC_KINDS = (SLOW, FAST, EVAL, ABLATION, CONSOLIDATE)

# Cumulative counters: in every metrics record, never decreasing within a run, never per-step figures.
SAMPLE_COUNTERS = ("samples_rl", "samples_fast")  # summed into ``samples`` (the FST-vs-RL sample axis)
# samples_distill (consolidation's student rollouts) is counted apart: it would skew that axis.
COUNTERS = ("samples", *SAMPLE_COUNTERS, "samples_distill", "rl_step", "fast_round", "consolidate_step", "cycle",
            "stage")
# Context in every metrics record: the stage's task, ``time`` = seconds since this Session object started
# (it restarts at a resume: not a counter, don't plot against it across resumes), ``ts`` = UTC wall time.
CONTEXT = ("kind", "task", "time", "ts")

# Per-kind keys (besides COUNTERS and CONTEXT). Optional keys may be absent (e.g. kl with the probe off).
KEYS: dict[str, tuple[str, ...]] = {
    SLOW: ("reward", "reward_std", "loss", "kl", "kl_bare", "kl_train", "rollouts", "tokens", "completion_length",
           "entropy", "learning_rate", "global_step", "seconds", "step_seconds", "population", "reward_by_harness",
           "reward/h<i>", "reward_std/h<i>", "fst/model_tokens", "fst/observation_tokens", "fst/tool_calls",
           "fst/turns", "fst/answer_unparsed", "fst/truncated", "fst/dropped_groups"),
    FAST: ("round", "rollouts", "rescore_rollouts", "metric_calls", "proposals", "accepted", "rejected",
           "bootstrap_proposals", "invalid_proposals", "reflection_calls", "reflection_failures", "reflection_tokens",
           "reflection_cost", "reflection", "best_id", "best_val", "seed_id", "seed_val", "val_scores", "prev_scores",
           "population", "errors", "gepa_run_dir", "seconds"),
    EVAL: ("reward", "reward_<label>", "split", "n", "k", "temperature", "weights", "harness", "kl", "answer_top",
           "answer_top_share", "answer_unparsed", "constant_floor"),
    ABLATION: ("base_weights+seed_harness", "base_weights+evolved_harness", "trained_weights+seed_harness",
               "trained_weights+evolved_harness"),
    CONSOLIDATE: ("kl_teacher", "reward", "rollouts", "tokens", "loss", "grad_norm", "teacher", "student",
                  "step_seconds", "seconds"),
}

# Event kinds (events.jsonl; field "event", with "ts") and their keys. ``progress`` goes to listeners
# only, never to disk: {"event": "progress", "phase": one of PHASES, "i": done, "n": total, ...extra}.
EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "start": ("mode", "task", "seed_harness"),
    "resume": ("counters", "checkpoint", "rolled_back_steps"),
    "stop": ("counters",),
    "pause": (),
    "unpause": (),
    "close": ("counters",),
    "fast": ("round", "population", "best", "accepted"),
    "edit": ("source", "parent", "id", "diff"),  # source: "api" or the hand-edited file
    "edit_rejected": ("file", "error"),
    "stage": ("stage", "task", "seed_harness"),
    "ablation": KEYS[ABLATION],
    "plasticity": ("task", "trained", "base"),
    "consolidate": ("phase", "method", "teacher", "teacher_names", "student", "student_harness",
                    "consolidate_step"),
}
EVENT_KINDS = tuple(EVENT_KEYS)
PROGRESS = "progress"
PHASES = ("rollouts", "gepa", "rl", "eval", "consolidate")

# Axis / column labels for every face (one name for KL everywhere).
LABELS = {
    "samples": "samples (RL + fast-loop rollouts)",
    "rl_step": "RL step",
    "fast_round": "fast round",
    "cycle": "cycle",
    "reward": "reward",
    "kl": "KL to start weights (per token, probe set)",
    "kl_bare": "KL to start weights (per token, probe set, no harness)",
    "kl_train": "KL to start weights (training batch, TRL)",
    "rollouts": "rollouts this step",
    "best_val": "GEPA best (fast-loop validation)",
}


def now() -> str:
    """Wall-clock timestamp used by every record (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_default(o: Any) -> Any:
    """``default=`` for ``json.dumps`` of records: objects with ``to_json``, sets and tuples, paths, numpy and
    torch scalars (``.item()``); anything else as its ``str``."""
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def jsonable(obj: Any) -> Any:
    """``obj`` made of JSON types only (see :func:`json_default`)."""
    return json.loads(json.dumps(obj, default=json_default))


# ---------------------------------------------------------------------------- building records
def counter_fields(counters: Mapping[str, int]) -> dict:
    """The cumulative part of a metrics record, from a session's counters."""
    c = {k: int(counters.get(k, 0)) for k in COUNTERS if k != "samples"}
    return {"samples": sum(c[k] for k in SAMPLE_COUNTERS), **c}


def make(kind: str, counters: Mapping[str, int], *, task: str | None = None, t0: float | None = None,
         **fields) -> dict:
    """One metrics record: ``kind``, the cumulative counters, context, then the step's own ``fields``.

    A per-step field may not reuse a counter's name (that is how a slow record once carried its step's
    rollout count as ``samples``): it raises ``ValueError``.
    """
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; one of {METRIC_KINDS}")
    clash = sorted(set(fields) & set(COUNTERS))
    if clash:
        raise ValueError(f"{kind} record: {clash} are cumulative counters, not per-step fields")
    rec = {"kind": kind, **counter_fields(counters), "task": task,
           "time": round(time.time() - t0, 3) if t0 is not None else None, "ts": now()}
    rec.update(jsonable(fields))
    return rec


def slow_fields(step: Mapping[str, Any]) -> dict:
    """A slow-loop step's metrics (``SlowLearner.step`` output) as slow-record fields.

    A dict with ``rollouts`` is already in the schema and passes through. Older learners' names are
    mapped: its per-step ``samples`` -> ``rollouts``, its probe KL
    ``kl_probe``/``kl_probe_bare`` -> ``kl``/``kl_bare``, TRL's batch ``kl`` -> ``kl_train``; its
    learner-lifetime count ``samples_seen`` is dropped (``samples_rl`` is the run's).
    """
    m = dict(step)
    m.pop("samples_seen", None)
    if "rollouts" in m:  # already in the schema (the learner's own names match)
        return {k: v for k, v in m.items() if k not in COUNTERS}
    if "samples" in m:
        m.setdefault("rollouts", m.pop("samples"))
    if "kl_probe" in m:  # the learner still names TRL's batch KL "kl" next to its probe
        if "kl" in m:
            m.setdefault("kl_train", m.pop("kl"))
        m["kl"] = m.pop("kl_probe")
        if "kl_probe_bare" in m:
            m["kl_bare"] = m.pop("kl_probe_bare")
    elif "kl" in m and "kl_train" not in m:  # probe off: a bare "kl" from the learner is TRL's
        m["kl_train"] = m.pop("kl")
    for k in COUNTERS:
        m.pop(k, None)
    return m


def progress(phase: str, i: int, n: int, **extra) -> dict:
    """An ephemeral progress event for listeners (never written to disk)."""
    return {"event": PROGRESS, "phase": phase, "i": int(i), "n": int(n), **extra}


def event(kind: str, **fields) -> dict:
    """One events.jsonl record."""
    return {"event": kind, "ts": now(), **jsonable(fields)}


def is_progress(rec: Mapping) -> bool:
    return rec.get("event") == PROGRESS


# ---------------------------------------------------------------------------- legacy keys (read side)
def normalize(rec: dict) -> dict:
    """A record in today's schema (a copy if anything changed). The one place legacy keys are mapped.

    Before the schema: slow records put their per-step rollout count in ``samples`` and TRL's batch KL
    in ``kl``, with the probe KL as ``kl_probe``; eval records had ``kl_probe``; some readers looked
    for ``kl_to_base``.
    """
    kind = rec.get("kind")
    legacy_slow = kind == SLOW and "rollouts" not in rec
    if not (legacy_slow or "kl_probe" in rec or "kl_to_base" in rec or "kl_probe_bare" in rec):
        return rec
    r = dict(rec)
    if legacy_slow:
        if "samples" in r:
            r["rollouts"] = r.pop("samples")
        if "kl" in r:
            r["kl_train"] = r.pop("kl")
        r.pop("samples_seen", None)
    if "kl_probe" in r:
        r["kl"] = r.pop("kl_probe")
    if "kl_probe_bare" in r:
        r["kl_bare"] = r.pop("kl_probe_bare")
    if "kl_to_base" in r:
        r.setdefault("kl", r.pop("kl_to_base"))
    if kind in METRIC_KINDS and all(k in r for k in SAMPLE_COUNTERS):
        r["samples"] = sum(r[k] or 0 for k in SAMPLE_COUNTERS)
    return r


def normalize_all(records: Iterable[dict]) -> list[dict]:
    return [normalize(r) for r in records]


# ---------------------------------------------------------------------------- reading
def of_kind(records: Iterable[Mapping], kind: str) -> list[Mapping]:
    return [r for r in records if r.get("kind") == kind]


def series(records: Iterable[Mapping], kind: str, key: str, x: str = "samples") -> tuple[list, list]:
    """(xs, ys): ``key`` against ``x`` over the records of ``kind``, in run order.

    ``x`` is a counter (``samples``, ``rl_step``, ``fast_round``, ``cycle``) or any key; records
    missing either value are skipped. Pass normalized records (``load_run`` does).
    """
    xs, ys = [], []
    for r in records:
        if r.get("kind") == kind and r.get(key) is not None and r.get(x) is not None:
            xs.append(r[x])
            ys.append(r[key])
    return xs, ys


def latest(records: Sequence[Mapping], kind: str, key: str | None = None) -> Mapping | None:
    """The last record of ``kind`` (that has ``key``, if given); None if there is none."""
    for r in reversed(records):
        if r.get("kind") == kind and (key is None or r.get(key) is not None):
            return r
    return None


def values(records: Iterable[Mapping], kind: str, key: str) -> list:
    """Every non-None ``key`` of the records of ``kind``, in run order."""
    return [r[key] for r in records if r.get("kind") == kind and r.get(key) is not None]


def constant_floor(rec: Mapping | None) -> float | None:
    """An eval record's ``constant_floor`` (what one constant answer scores) when that is a strategy, not luck:
    the most common gold answer is shared by at least 2 of its ``n`` examples (HoVer's balanced labels: 0.5).
    None when every gold answer is different (a constant answer then hits 1 example of n: on 2 examples that
    reads 0.5 and means nothing) or the record has no statistics."""
    floor, n = (rec or {}).get("constant_floor"), (rec or {}).get("n")
    if not isinstance(floor, (int, float)):
        return None
    return floor if not isinstance(n, (int, float)) or floor * n >= 2 - 1e-9 else None


def running_max(values: Iterable[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out
