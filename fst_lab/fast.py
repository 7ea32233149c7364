"""Fast weights: one GEPA round that turns a harness population into a new one.

FST's fast loop (arXiv 2605.12484, §3) keeps a *Pareto population* of K harnesses. Every T RL steps
it re-scores that population under the current weights, runs a light GEPA optimisation seeded with
the best member, and keeps the K harnesses that are best on some validation problem:

    >>> from fst_lab.fast import FastConfig, fast_step
    >>> res = fast_step(policy, task, [seed_harness], task.examples("train", 8), task.examples("val", 8),
    ...                 config=FastConfig(population_size=4), round=1)
    >>> res.population[0].system_prompt, res.val_scores[res.best_id], res.accepted

Two proposal operators compete under GEPA's own acceptance test and Pareto selection:

- ``reflect``: GEPA's default instruction-proposal prompt (``InstructionProposalSignature``), sent to
  the reflection LM (:class:`fst_lab.lm.ReflectionLM`, any LiteLLM model; offline default: the policy
  itself as ``fst-local/policy``). It reads full trajectories (tool calls, observations, errors) and
  the task's feedback, and rewrites one component (system prompt, task template, a tool description
  or the few-shot YAML).
- ``bootstrap``: few-shot demos built from the policy's *own* high-reward trajectories on training
  problems (DSPy's BootstrapFewShot idea). It needs no reflection LM at all, so the fast loop still
  improves when the reflector is as weak as a 135M model.

Each GEPA round is a fresh optimisation (scores from an earlier round were measured under older
weights), in its own run directory; GEPA's state there is pickled and is never read back by fst_lab.

The adapter and both operators live in :mod:`fst_lab.adapter`, Pareto selection in
:mod:`fst_lab.pareto`; their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fst_lab.config import CANDIDATE_SELECTIONS, FastConfig  # noqa: F401  (re-exported)
from fst_lab.adapter import (HarnessAdapter, ProposalRecord, _emit, candidate_key,  # noqa: F401  (re-exported)
                             extract_proposal)
from fst_lab.harness import Harness, atomic_write_text
from fst_lab.pareto import pareto_layers, select_population  # noqa: F401  (re-exported)
from fst_lab.rollout import Trajectory, rollout_pairs
from fst_lab.runs import FAST_RESULT

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.models import Policy
    from fst_lab.tasks.base import Example, Task


log = logging.getLogger(__name__)
RESULT_FILE = FAST_RESULT  # fst_lab.runs owns the run-directory layout


# ---------------------------------------------------------------------------- GEPA glue
class _Tracker:
    """GEPA callback: counts proposals/acceptances and forwards events to ``on_event``."""

    def __init__(self, adapter: HarnessAdapter, on_event: Callable[[dict], None] | None):
        self.adapter, self.on_event = adapter, on_event
        self.accepted = self.rejected = self.errors = 0
        self.error_messages: list[str] = []
        self._parent_sum: float | None = None

    def _emit(self, event: str, **kw) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"kind": "fast", "event": event, **kw})
            except Exception:  # a UI callback must never end the round
                log.exception("fast: on_event callback failed")

    def _last(self) -> ProposalRecord | None:
        for rec in reversed(self.adapter.proposals):
            if rec.status == "proposed":
                return rec
        return None

    def on_iteration_start(self, e):
        self.adapter.iteration = e["iteration"]
        self._parent_sum = None

    def on_evaluation_end(self, e):
        if e.get("candidate_idx") is not None and e.get("has_trajectories"):
            self._parent_sum = float(sum(e["scores"]))  # the parent's minibatch, before reflection

    def on_candidate_accepted(self, e):
        self.accepted += 1
        rec = self._last()
        if rec is not None:
            rec.status = "accepted"
            rec.subsample_before, rec.subsample_after = self._parent_sum, e.get("new_score")
        self._emit("accepted", iteration=e["iteration"], candidate=e["new_candidate_idx"],
                   operator=rec.operator if rec else None, subsample_score=e.get("new_score"))

    def on_candidate_rejected(self, e):
        self.rejected += 1
        rec = self._last()
        if rec is not None:
            rec.status = "rejected"
            rec.subsample_before, rec.subsample_after = e.get("old_score"), e.get("new_score")
        self._emit("rejected", iteration=e["iteration"], operator=rec.operator if rec else None,
                   old=e.get("old_score"), new=e.get("new_score"))

    def on_error(self, e):
        self.errors += 1
        self.error_messages.append(f"{type(e['exception']).__name__}: {e['exception']}")
        log.error("fast: GEPA iteration %s raised %s", e.get("iteration"), self.error_messages[-1])

    def on_budget_updated(self, e):
        self._emit("budget", used=e["metric_calls_used"], remaining=e.get("metric_calls_remaining"))


class _GEPALog:
    """GEPA's LoggerProtocol -> Python logging (and run_log.txt in the round's directory)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, path: Path | None):
        self.logger, self.path = logger, path

    def log(self, message: str) -> None:
        self.logger.debug("gepa: %s", message)
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(message.rstrip("\n") + "\n")
            except OSError:
                pass


# ---------------------------------------------------------------------------- the fast step
@dataclass
class FastResult:
    """What one fast step produced. ``population`` is best-first by validation score."""

    population: list[Harness]
    val_scores: dict[str, float]  # harness id -> mean validation reward (every candidate of the round)
    per_instance: dict[str, list[float]]  # harness id -> reward per validation example (val order)
    prev_scores: dict[str, float]  # previous members re-scored under the current weights
    metric_calls: int  # GEPA's rollout budget used (minibatches + validation runs)
    proposals: int  # proposals GEPA evaluated (accepted + rejected)
    accepted: int
    rejected: int
    bootstrap_proposals: int
    reflection_calls: int
    reflection_failures: int
    reflection_tokens: int
    reflection_cost: float
    seconds: float
    best_id: str
    round: int = 0
    seed_id: str = ""
    candidates: list[Harness] = field(default_factory=list)  # GEPA's candidates as harnesses (seed first)
    invalid_proposals: int = 0  # reflections that were no valid harness, no change, or empty
    rescore_rollouts: int = 0  # rollouts spent re-scoring the previous population
    rollouts: int = 0  # all policy rollouts of the step (re-scoring + GEPA)
    errors: list[str] = field(default_factory=list)  # exceptions GEPA caught and logged
    proposal_log: list[dict] = field(default_factory=list)
    reflection: dict = field(default_factory=dict)  # ReflectionStats of this step (when available)
    gepa_run_dir: str | None = None

    @property
    def best(self) -> Harness:
        return next(h for h in self.population if h.id == self.best_id)

    def summary(self) -> dict:
        """One compact metrics record (no harness texts, no per-proposal log)."""
        d = self.to_json()
        for k in ("harnesses", "proposal_log", "per_instance", "candidates"):
            d.pop(k, None)
        d["population"] = [h.id for h in self.population]
        d["best_val"] = self.val_scores.get(self.best_id)
        d["seed_val"] = self.prev_scores.get(self.seed_id)
        return d

    def to_json(self) -> dict:
        """Everything, JSON-ready (written to ``fst_fast_result.json`` in the round's directory)."""
        by_id = {h.id: h for h in [*self.population, *self.candidates]}
        return {
            "round": self.round, "seed_id": self.seed_id, "best_id": self.best_id,
            "population": [{"id": h.id, "name": h.name, "origin": h.lineage.origin,
                            "parents": list(h.lineage.parents), "round": h.lineage.round, "note": h.lineage.note,
                            "val_score": self.val_scores.get(h.id)} for h in self.population],
            "val_scores": self.val_scores, "per_instance": self.per_instance, "prev_scores": self.prev_scores,
            "metric_calls": self.metric_calls, "proposals": self.proposals, "accepted": self.accepted,
            "rejected": self.rejected, "bootstrap_proposals": self.bootstrap_proposals,
            "invalid_proposals": self.invalid_proposals, "reflection_calls": self.reflection_calls,
            "reflection_failures": self.reflection_failures, "reflection_tokens": self.reflection_tokens,
            "reflection_cost": self.reflection_cost, "reflection": self.reflection,
            "rescore_rollouts": self.rescore_rollouts, "rollouts": self.rollouts, "seconds": self.seconds,
            "errors": self.errors, "proposal_log": self.proposal_log, "gepa_run_dir": self.gepa_run_dir,
            "candidates": [h.id for h in self.candidates],
            "harnesses": {hid: h.to_dict() for hid, h in by_id.items()},
        }


def fast_step(policy: "Policy", task: "Task", population: Sequence[Harness], train_examples: Sequence["Example"],
              val_examples: Sequence["Example"], *, config: FastConfig | None = None, round: int = 0,
              reflection_lm: Callable[[Any], str] | None = None, run_dir: str | Path | None = None,
              progress: bool = True, logger: logging.Logger | logging.LoggerAdapter | None = None,
              on_event: Callable[[dict], None] | None = None) -> FastResult:
    """One GEPA round: re-score ``population`` now, evolve from its best member, keep K by Pareto.

    Args:
        population: the current harnesses (at least one); they are never modified.
        train_examples: GEPA's reflection minibatches and the only source of bootstrapped demos.
        val_examples: the Pareto set: every kept candidate is scored on all of them (empty: train).
        reflection_lm: a callable ``(prompt) -> str`` (e.g. :class:`fst_lab.lm.ReflectionLM`);
            default: built from ``config`` (for ``fst-local/...`` the policy is registered first).
        run_dir: GEPA's directory for this round (e.g. ``RUN/fast/round_0003``). A leftover GEPA
            state there is moved aside (``<dir>.stale-N``): resuming it would reuse scores from
            other weights. ``fst_fast_result.json`` is written there at the end.
        on_event: called with small dicts (``{"kind": "fast", "event": "accepted", ...}``) for UIs.

    Returns a :class:`FastResult`; new GEPA harnesses carry lineage (parents = the harness ids of
    their GEPA parents, origin ``gepa`` or ``bootstrap``, ``round``), earlier members keep theirs.
    """
    import gepa

    config = config or FastConfig()
    lg = logger or log
    t0 = time.time()
    members = _dedupe(population)
    if not members:
        raise ValueError("fast_step needs a non-empty population")
    train, val = list(train_examples), list(val_examples) or list(train_examples)
    if not train:
        raise ValueError("fast_step needs training examples")
    rlm = reflection_lm if reflection_lm is not None else _default_reflection_lm(policy, config)
    stats0 = getattr(rlm, "stats", None)

    # (a) Re-score every member under the *current* weights: earlier scores are stale after RL.
    pairs = [(h, ex) for h in members for ex in val]
    trajs = rollout_pairs(policy, pairs, task, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                          seed=config.seed + 100_003 * round)
    per_instance: dict[str, list[float]] = {}
    member_trajs: dict[str, list[Trajectory]] = {}
    for i, h in enumerate(members):
        chunk = trajs[i * len(val):(i + 1) * len(val)]
        member_trajs[h.id] = chunk
        per_instance[h.id] = [float(t.reward) for t in chunk]
    prev_scores = {hid: _mean(v) for hid, v in per_instance.items()}
    seed_h = max(members, key=lambda h: prev_scores[h.id])  # first of the best (members are best-first)
    lg.info("fast round %d: re-scored %d member(s) on %d val examples: %s; seed %s", round, len(members), len(val),
            {k: _r3(v) for k, v in prev_scores.items()}, seed_h.id)
    _emit(on_event, "rescored", round=round, scores=dict(prev_scores), seed=seed_h.id)

    # (b) A fresh GEPA optimisation seeded with the best member.
    adapter = HarnessAdapter(policy, task, seed_h, temperature=config.temperature,
                             max_new_tokens=config.max_new_tokens, seed=config.seed + 1000 * round,
                             reflection_lm=rlm, bootstrap=config.bootstrap, bootstrap_every=config.bootstrap_every,
                             max_demos=config.max_demos, demo_min_reward=config.demo_min_reward,
                             demo_example_ids=[ex.id for ex in train])
    seed_cand = seed_h.to_candidate()
    adapter.prime(seed_cand, member_trajs[seed_h.id])
    tracker = _Tracker(adapter, on_event)
    adapter.on_event = on_event
    gepa_dir = _fresh_dir(run_dir, lg) if run_dir is not None else None
    budget = config.budget(len(train), len(val))
    lg.info("fast round %d: GEPA with %d train / %d val examples, budget %d rollouts, reflection %s", round,
            len(train), len(val), budget, getattr(rlm, "model", type(rlm).__name__))
    result = gepa.optimize(
        seed_candidate=seed_cand, trainset=train, valset=val, adapter=adapter,
        reflection_lm=rlm if config.max_reflection_cost is not None else None,
        max_reflection_cost=config.max_reflection_cost,
        candidate_selection_strategy=config.candidate_selection,
        reflection_minibatch_size=config.reflection_minibatch_size,
        max_metric_calls=budget, use_merge=config.use_merge, run_dir=str(gepa_dir) if gepa_dir else None,
        callbacks=[tracker], logger=_GEPALog(lg, gepa_dir / "run_log.txt" if gepa_dir else None),
        display_progress_bar=progress, seed=config.seed + round, raise_on_exception=False,
        track_best_outputs=False)

    # (c) GEPA's candidates as harnesses with lineage, then K by Pareto over the union.
    by_content = {h.content_id(): h for h in members}
    cand_harnesses: list[Harness] = []
    for i, cand in enumerate(result.candidates):
        if i == 0:
            cand_harnesses.append(seed_h)
            continue
        parents = [cand_harnesses[p].id for p in result.parents[i] if p is not None and p < len(cand_harnesses)]
        origin, note = adapter.origin_of(cand) or ("merge" if len(parents) > 1 else "gepa", "")
        changed = {k: v for k, v in cand.items() if seed_h.component(k) != v}
        h = seed_h.with_components(changed, origin=origin, round=round, parents=parents or [seed_h.id], note=note)
        h = by_content.get(h.content_id(), h)  # identical to an existing member: keep the member's lineage
        by_content.setdefault(h.content_id(), h)
        cand_harnesses.append(h)
        scores = result.val_subscores[i]
        per_instance.setdefault(h.id, [float(scores.get(j, 0.0)) for j in range(len(val))])
    union = {h.id: h for h in [*members, *cand_harnesses]}
    chosen = select_population(per_instance, config.population_size, prefer=[h.id for h in members])
    new_pop = [union[cid] for cid in chosen]
    val_scores = {hid: _mean(v) for hid, v in per_instance.items()}

    props = [p for p in adapter.proposals if p.status in ("accepted", "rejected")]
    rstats = rlm.stats.since(stats0) if stats0 is not None and hasattr(rlm, "stats") else None
    res = FastResult(
        population=new_pop, val_scores=val_scores, per_instance=per_instance, prev_scores=prev_scores,
        metric_calls=int(result.total_metric_calls or 0), proposals=len(props), accepted=tracker.accepted,
        rejected=tracker.rejected, bootstrap_proposals=sum(p.operator == "bootstrap" for p in props),
        reflection_calls=rstats.calls if rstats else adapter.reflection_calls,
        reflection_failures=rstats.failures if rstats else adapter.reflection_failures,
        reflection_tokens=rstats.tokens if rstats else 0, reflection_cost=rstats.cost if rstats else 0.0,
        seconds=time.time() - t0, best_id=new_pop[0].id, round=round, seed_id=seed_h.id,
        candidates=cand_harnesses,
        invalid_proposals=sum(p.status in ("invalid", "noop") and p.operator == "reflect" for p in adapter.proposals),
        rescore_rollouts=len(trajs), rollouts=len(trajs) + adapter.rollouts, errors=list(tracker.error_messages),
        proposal_log=[p.to_json() for p in adapter.proposals], reflection=rstats.to_json() if rstats else {},
        gepa_run_dir=str(gepa_dir) if gepa_dir else None)
    lg.info("fast round %d: %d proposal(s) (%d bootstrap), %d accepted, %d rejected; reflection %d call(s), "
            "%d failed; best %s %.3f (seed %.3f) in %.1fs", round, res.proposals, res.bootstrap_proposals,
            res.accepted, res.rejected, res.reflection_calls, res.reflection_failures, res.best_id,
            val_scores[res.best_id], prev_scores[seed_h.id], res.seconds)
    if tracker.errors:
        lg.warning("fast round %d: GEPA caught %d exception(s): %s", round, tracker.errors, tracker.error_messages[:3])
    if gepa_dir is not None:
        atomic_write_text(gepa_dir / RESULT_FILE, json.dumps(res.to_json(), indent=2, default=str) + "\n")
    _emit(on_event, "done", round=round, best=res.best_id, accepted=res.accepted, proposals=res.proposals)
    return res


def add_manual(population: Sequence[Harness], harness: Harness, *, parent: Harness | str | None = None,
               round: int, max_size: int | None = None, note: str = "") -> list[Harness]:
    """A new population with a hand-edited harness (origin ``manual``) in it.

    The size stays the same by default (the slow loop needs K to divide G): the manual harness
    replaces the *last* non-manual member, i.e. the worst by the last validation, since
    :func:`fast_step` returns populations best-first. Pass ``max_size`` to allow growth (e.g.
    ``len(population) + 1``; the next fast step trims back to K). A harness whose content is already
    in the population changes nothing. ``population`` itself is never modified.
    """
    members = list(population)
    parent_id = parent.id if isinstance(parent, Harness) else parent
    edited = harness.replace(lineage=dataclasses.replace(
        harness.lineage, origin="manual", round=round, parents=(parent_id,) if parent_id else (),
        note=note or harness.lineage.note))
    if any(m.content_id() == edited.content_id() for m in members):
        log.info("add_manual: harness %s is already in the population", edited.id)
        return members
    limit = len(members) if max_size is None else max_size
    if limit < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    while len(members) >= limit and members:
        victims = [i for i, m in enumerate(members) if m.lineage.origin != "manual"] or list(range(len(members)))
        dropped = members.pop(victims[-1])
        log.info("add_manual: %s replaces %s (%s)", edited.id, dropped.id, dropped.lineage.origin)
    return [*members, edited]


# ---------------------------------------------------------------------------- helpers
def _default_reflection_lm(policy: "Policy", config: FastConfig):
    import os

    from fst_lab.lm import LOCAL_PROVIDER, ReflectionLM, register_local_policy

    if config.reflection_lm.startswith(LOCAL_PROVIDER + "/"):
        register_local_policy(policy, config.reflection_lm.split("/", 1)[1])
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.api_key_env and key is None:
        raise ValueError(f"api_key_env={config.api_key_env!r} is not set in the environment")
    return ReflectionLM(config.reflection_lm, api_base=config.api_base, api_key=key,
                        num_retries=config.reflection_retries, timeout=config.reflection_timeout,
                        temperature=config.reflection_temperature, max_tokens=config.reflection_max_tokens)


def _fresh_dir(run_dir: str | Path, lg) -> Path:
    d = Path(run_dir)
    if d.exists() and any(d.iterdir()):
        n = 1
        while Path(f"{d}.stale-{n}").exists():
            n += 1
        stale = Path(f"{d}.stale-{n}")
        d.rename(stale)
        lg.warning("fast: %s held an earlier GEPA run (scores from other weights); moved it to %s", d, stale)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _dedupe(population: Sequence[Harness]) -> list[Harness]:
    seen, out = set(), []
    for h in population:
        if h.id not in seen:
            seen.add(h.id)
            out.append(h)
    return out


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v)) if v else 0.0


def _r3(x: float) -> float:
    return float(f"{x:.3f}")


