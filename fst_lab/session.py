"""Session: the one object notebooks, the CLI and the app drive. It interleaves the two loops.

    >>> from fst_lab import FSTConfig, Session
    >>> s = Session(FSTConfig(task="math", cycles=2))      # creates runs/fst-math-<time>/
    >>> s.fast_step()            # one GEPA round -> new population of K harnesses
    >>> s.slow_step(6)           # 6 RL steps, each problem's G rollouts spread over the population
    >>> s.evaluate()             # mean@k on validation with the best harness
    >>> s.run()                  # the config's schedule, cycle after cycle ("p -> w*6")
    >>> s.edit_harness(0, {"system_prompt": "..."})     # a hand edit: origin 'manual', next step uses it

Everything the session does is written to its run directory (:class:`fst_lab.rundir.RunDir`) at step
boundaries, atomically, so ``Session.resume(run_dir)`` continues with the same counters, optimizer
state and population. Records follow :mod:`fst_lab.records`. ``RunDir(run).request_stop()`` (or
``session.request_stop()``) ends a run cleanly at the next boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable

from fst_lab import evaluation, records
from fst_lab.config import FSTConfig, Stage
from fst_lab.control import Control, gepa_progress, progress_bar
from fst_lab.errors import FstLabError
from fst_lab.evaluation import bare_harness  # noqa: F401  (public: fst_lab.session.bare_harness)
from fst_lab.harness import Harness, HarnessError
from fst_lab.population import for_training, lineage_rows, manual_edit, ranked, resolve_target
from fst_lab.rundir import RunDir
from fst_lab.schedule import fast_window, run_schedule, stage_done, stage_harness, stage_task
from fst_lab.stepper import StepInterrupted
from fst_lab.tools import warn_unimplemented
from fst_lab.weights import Weights

log = logging.getLogger(__name__)


# The session's counters (state.json): the cumulative ones of fst_lab.records plus the schedule's position
# (plan_pos: next step of the cycle; stage_step: RL steps in the current stage) and evaluations so far.
COUNTERS = ("cycle", "plan_pos", "rl_step", "fast_round", "consolidate_step", "samples_rl", "samples_fast",
            "samples_distill", "stage", "stage_step", "evals")


def _as_config(config: FSTConfig | dict | str | Path | None) -> FSTConfig:
    """A validated FSTConfig from a config, a dict, a YAML path, or None (the defaults)."""
    if config is None:
        config = FSTConfig()
    elif isinstance(config, dict):
        config = FSTConfig.from_dict(config)
    elif isinstance(config, (str, Path)):
        config = FSTConfig.load(config)
    config.validate()
    return config


class SessionError(FstLabError, RuntimeError):
    """A step that can't run in this session (wrong mode, a run directory that exists or isn't one)."""


class Session:
    """Holds policy, population, task schedule, counters and metrics; steps the fast and slow loops.

    Thread-safe for one worker: public steps take the session lock, and ``request_stop()``, ``pause()``,
    ``status()``, ``busy`` and ``activity`` work from any thread while one runs. ``listeners`` receive
    every record written and the ephemeral progress events of :func:`fst_lab.records.progress`."""

    def __init__(self, config: FSTConfig | dict | str | Path | None = None, run_dir: str | Path | None = None, *,
                 policy=None, progress: bool = True, _resume: bool = False):
        self.config = config = _as_config(config)  # raises ConfigError before anything is written
        self.progress = progress
        self.stages: list[Stage] = config.stage_list()
        # Resolve everything that can fail on bad input *before* creating the run directory.
        self._tasks: dict[int, Any] = {}
        self.stage_idx = 0
        self.task = self._make_task(0)
        self.seed_harness = stage_harness(self.config, 0, self.task)
        for idx in range(1, len(self.stages)):  # a later stage's task or harness that won't load: now, not hours in
            self._make_task(idx)
            stage_harness(self.config, idx)  # (its tool warning, if any, comes when the stage starts)
        name = config.run_name or f"{config.mode}-{self.stages[0].task}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.runs_root) / name
        self.rundir = RunDir(self.run_dir)
        if not _resume and self.rundir.exists():
            raise SessionError(f"{self.run_dir} already holds a run; use Session.resume('{self.run_dir}') "
                               "or choose another run_name")
        if policy is None and not _resume:
            from fst_lab.models import check_model

            check_model(config.model)  # a model that can't be found: ModelNotFoundError, no run directory
        self.population: list[Harness] = [self.seed_harness]
        self.population_scores: dict[str, float] = {}  # id -> score; no entry: not evaluated (e.g. a hand edit)
        self.harnesses: dict[str, Harness] = {self.seed_harness.id: self.seed_harness}  # every harness ever
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.checkpoint: str | None = None
        self.metrics: list[dict] = []
        self.last_fast = None
        self.last_trajectories: list = []
        self.weights = Weights(config.model, policy)
        self._lock = threading.RLock()
        self.control = Control(self.rundir)  # busy / activity / pause / stop / listeners, for any thread
        self.listeners: list[Callable[[dict], None]] = self.control.listeners  # every record + progress events
        self._t0 = time.time()
        if not _resume:
            self.rundir.create(self.config.to_yaml(), self._write_first)

    def _write_first(self) -> None:
        self._store(self.seed_harness)
        self.rundir.write_current(self.population)
        self._event("start", mode=self.config.mode, task=self.stages[0].task, seed_harness=self.seed_harness.id)
        self._save_state()

    def _make_task(self, idx: int):
        if idx not in self._tasks:
            self._tasks[idx] = stage_task(self.config, idx)
        return self._tasks[idx]

    @classmethod
    def resume(cls, run_dir: str | Path, *, policy=None, progress: bool = True) -> "Session":
        """Continue a run from its directory: same counters, optimizer state and population."""
        rd = RunDir(run_dir)
        if not rd.exists():
            raise SessionError(f"{rd.path} is not a run directory (no {rd.config_file.name})")
        s = cls(FSTConfig.load(rd.config_file), rd.path, policy=policy, progress=progress, _resume=True)
        state = s.rundir.load_state()  # RunDirError without state.json; rolled back to the checkpoint's state
        s.counters.update(state["counters"])
        s.stage_idx = s.counters["stage"]
        s.task = s._make_task(s.stage_idx)
        s.harnesses = s.rundir.load_harnesses()
        s.population = [s.harnesses[i] for i in state["population"]]
        s.seed_harness = s.harnesses.get(state.get("seed_harness"), s.seed_harness)
        s.population_scores = dict(state.get("population_scores", {}))
        s.checkpoint = state.get("checkpoint")
        s.metrics = records.normalize_all(s.rundir.drop_metrics_after(s.counters))  # redone after the resume
        s.rundir.clear_stop()
        s.rundir.write_current(s.population)
        s._event("resume", counters=dict(s.counters), checkpoint=s.checkpoint,
                 rolled_back_steps=state.get("rolled_back_steps", 0))
        if s.checkpoint and s.config.mode != "gepa":
            s._ensure_slow().load_state(s.rundir.checkpoint_dir(s.checkpoint))
        return s

    # ================================================================== policy / loops
    @property
    def policy(self):
        """The live policy (trained weights once the slow loop exists)."""
        return self.weights.policy

    def base_policy(self):
        """The start weights, frozen (for the channel ablation and KL)."""
        return self.weights.base()

    @property
    def learner(self):
        """The slow loop's SlowLearner (None before the first slow step)."""
        return self.weights.learner

    def fast_config(self):
        """The fast loop's FastConfig (K, seed and max_new_tokens already shared with the top level)."""
        return self.config.fast

    def slow_config(self):
        """The slow loop's SlowConfig (K, G, seed, prompts_per_step, report_to shared with the top level)."""
        return self.config.slow

    def _ensure_slow(self):
        if self.config.mode == "gepa":
            raise SessionError("mode 'gepa' freezes the weights: no slow steps")
        if self.weights.learner is None:
            from fst_lab.slow import SlowLearner

            learner = self.weights.start_learning(lambda pol: SlowLearner(
                pol, self.task, self._train_population(), self.slow_config(), output_dir=str(self.rundir.trainer_dir)))
            learner.set_task(self.task, self.task.examples("train"))
            from fst_lab.consolidate_session import rl_distill_term

            learner.extra_loss = rl_distill_term(self, learner)  # None unless consolidate.rl_coef > 0
        return self.weights.learner

    def _train_population(self) -> list[Harness]:
        """The K harnesses of the next slow step (mode 'rl': the seed harness K times)."""
        pop = [self.seed_harness] if self.config.mode == "rl" else self.population
        return for_training(pop, self.population_scores, self.config.population_size)

    def best_harness(self) -> Harness:
        """The best *evaluated* member (the first member while none is scored)."""
        return ranked(self.population, self.population_scores)[0]

    # ================================================================== steps
    def fast_step(self, *, train_examples=None, val_examples=None) -> Any:
        """One GEPA round from the current population under the current weights -> new population."""
        if self.config.mode == "rl":
            raise SessionError("mode 'rl' keeps the seed harness fixed: no fast steps")
        from fst_lab.fast import fast_step

        with self._working("fast step"):
            self._sync_hand_edits()
            rnd = self.counters["fast_round"] + 1
            train, val = fast_window(self.task.examples("train"), self.config.fast_train_size,
                                     self.config.fast_val_size, rnd)
            train = list(train_examples) if train_examples is not None else train
            val = list(val_examples) if val_examples is not None else val
            cfg = self.fast_config()
            on_event = gepa_progress(self.control.notify, len(self.population) * len(val),
                                     cfg.budget(len(train), len(val)))
            t0 = time.time()
            res = fast_step(self.policy, self.task, list(self.population), train, val, config=cfg, round=rnd,
                            run_dir=str(self.rundir.fast_dir(rnd)), progress=self.progress, on_event=on_event)
            for h in res.population:
                self._store(h)
            self.population = list(res.population)
            self.population_scores = dict(res.val_scores)
            self.last_fast = res
            self.counters["fast_round"] = rnd
            self.counters["samples_fast"] += res.rollouts  # re-scoring the old population + GEPA's metric calls
            self.rundir.write_current(self.population)
            self._record(records.FAST, **{**res.summary(), "seconds": time.time() - t0})
            self._save_state()
            self._event("fast", round=rnd, population=[h.id for h in self.population], best=res.best_id,
                        accepted=res.accepted)
            return res

    def slow_step(self, n: int = 1) -> list[dict]:
        """``n`` RL optimizer steps on the current population; returns one metrics record per step."""
        if self.config.mode == "gepa":
            raise SessionError("mode 'gepa' freezes the weights: no slow steps")
        out = []
        bar = partial(progress_bar, self.progress, desc="slow steps", total=n, disable=n <= 1)
        with self.control.paced(n, "slow step", "rl", self._lock, wrap=bar) as steps:
            for i in steps:
                self._sync_hand_edits()
                slow = self._ensure_slow()
                slow.set_population(self._train_population())
                t0 = time.time()
                try:
                    done = slow.step(1)
                except StepInterrupted as e:  # Ctrl-C: a step the trainer finished is still counted
                    for m in e.records:
                        self._slow_step_done(m, t0)
                    raise
                out.append(self._slow_step_done(done[-1], t0))
                self.control.notify(records.progress("rl", i + 1, n, reward=out[-1].get("reward")))
        return out

    def _slow_step_done(self, step: dict, t0: float) -> dict:
        m = records.slow_fields(step)
        self.counters["rl_step"] += 1
        self.counters["stage_step"] += 1
        self.counters["samples_rl"] += m["rollouts"]
        self._save_rollouts(self.learner.last_trajectories, f"slow_{self.counters['rl_step']:06d}")
        # The metrics line goes first: the checkpoint also writes state.json, and a step the state counts
        # must already be in metrics.jsonl (a crash in between would lose its record for good). A record
        # without a matching state is dropped by resume() and the step redone.
        rec = self._record(records.SLOW, **{**m, "seconds": time.time() - t0})
        if self.counters["rl_step"] % self.config.checkpoint_every == 0:
            self._checkpoint()
        if stage_done(self.stages, self.stage_idx, self.counters["stage_step"]):
            self._start_stage(self.stage_idx + 1)
        self._save_state()
        return rec

    def consolidate(self, n: int | None = None) -> list[dict]:
        """``n`` consolidation steps (default ``config.consolidate.steps``): :mod:`fst_lab.consolidate_session`."""
        from fst_lab.consolidate_session import session_consolidate

        return session_consolidate(self, n)

    # ================================================================== evaluation
    def evaluate(self, split: str = "val", *, n: int | None = None, k: int | None = None,
                 harness: str | Harness = "best", weights: str = "trained", record: bool = True,
                 temperature: float | None = None) -> dict:
        """mean@k reward on a split. harness: best | seed | none | population | a Harness; weights: trained | base."""
        with self._working("evaluate"):
            k = k or self.config.eval_k
            exs = self.task.examples(split, n or self.config.eval_size)
            pol = self.base_policy() if weights == "base" else self.policy
            targets = evaluation.targets(harness, best=self.best_harness, seed=self.seed_harness,
                                         population=self.population, task=self.stages[self.stage_idx].task)
            scores, trajs = evaluation.mean_at_k(
                pol, targets, exs, self.task, k=k, max_new_tokens=self.config.max_new_tokens, seed=self.config.seed,
                temperature=temperature, on_progress=lambda i, m: self.control.notify(records.progress("eval", i, m)))
            result = {"split": split, "n": len(exs), "k": k, "weights": weights, **scores}
            self.last_trajectories = trajs
            if record:
                self.counters["evals"] += 1
                fields = {key: v for key, v in result.items() if key != "harness_ids"}
                if self.learner is not None:
                    try:
                        fields["kl"] = float(self.learner.kl_probe())
                    except Exception as e:  # KL is a diagnostic; never fail an evaluation over it
                        log.warning("kl probe failed: %s", e)
                self._save_rollouts(trajs, f"eval_{self.counters['evals']:04d}")
                self._record(records.EVAL, harness=harness if isinstance(harness, str) else harness.id, **fields)
                self._save_state()
            return result

    def channel_ablation(self, n: int | None = None) -> dict[str, float]:
        """The paper's 2x2: {base, trained weights} x {seed, evolved harness} -> mean reward."""
        with self._working("channel ablation"):
            out = {evaluation.ablation_key(w, h): self.evaluate(n=n, harness=h, weights=w, record=False)["reward"]
                   for w, h in evaluation.ABLATION_CELLS}
            self._event("ablation", **out)
            self._record(records.ABLATION, **out)
            return out

    def plasticity_probe(self, task: str, *, level: int = 1, steps: int = 2) -> dict:
        """From the current weights, a fresh RL run on a new task (and the same from the base weights)."""
        with self._working("plasticity probe"):
            out = evaluation.plasticity(self.weights, task, self.config, level=level, steps=steps,
                                        out_dir=self.rundir.plasticity_dir)
            self._event("plasticity", task=task, **out)
            return out

    # ================================================================== hand edits
    def edit_harness(self, target: int | str | None = None, updates: dict[str, str] | Harness | None = None, *,
                     note: str = "") -> Harness:
        """A hand edit: a new candidate (origin ``manual``) replacing ``target`` from the next step on.

        ``target`` is a population index, a harness id, or None (the best). ``updates`` maps component
        names (system_prompt, task_template, few_shot, tool_description_<name>) to new text, or is a
        whole Harness. The edit and its diff are recorded in events.jsonl and survive resume. The new
        harness has no score until it is evaluated (the next fast step re-scores the population).
        """
        with self._working("edit"):
            idx = resolve_target(self.population, target, self.best_harness())
            old = self.population[idx]
            self._apply_manual(idx, old, manual_edit(old, updates, round=self.counters["fast_round"], note=note),
                               source="api")
            return self.population[idx]

    def _apply_manual(self, idx: int, old: Harness, new: Harness, *, source: str) -> None:
        diff = old.diff(new)
        warn_unimplemented(new, self.task, f"edited harness {new.id} ({source})")
        self.population[idx] = new  # no score: "not evaluated" until the next fast step re-scores it
        self._store(new)
        self.rundir.write_current(self.population)
        self._event("edit", source=source, parent=old.id, id=new.id, diff=diff)
        self._save_state()
        if self.learner is not None:
            self.learner.set_population(self._train_population())

    def _sync_hand_edits(self) -> None:
        """Pick up hand edits of RUN/harnesses/current/*.yaml (invalid files are reported, not used)."""
        for fname, hid, got in self.rundir.hand_edits():
            path = self.rundir.current_dir / fname
            if isinstance(got, HarnessError):
                self._event("edit_rejected", file=str(path), error=str(got))
                log.warning("ignoring invalid hand edit: %s", got)
                continue
            idx = next((i for i, x in enumerate(self.population) if x.id == hid), None)
            if idx is not None:
                old = self.population[idx]
                new = manual_edit(old, got, round=self.counters["fast_round"], note=f"hand edit of {fname}",
                                  source=str(path))
                self._apply_manual(idx, old, new, source=str(path))

    # ================================================================== run loop and control
    def run(self, cycles: int | None = None, *, evaluate: bool | None = None) -> dict:
        """Follow the schedule for ``cycles`` cycles (default: the config's, minus those already done)."""
        total = cycles if cycles is not None else max(0, self.config.cycles - self.counters["cycle"])
        with self.control.working("run"):
            run_schedule(self, total, self.config.eval_every_cycle if evaluate is None else evaluate)
        return self.status()

    def _working(self, label: str):
        return self.control.working(label, self._lock)

    def request_stop(self) -> None:
        """Stop at the next step boundary (``RunDir(run).request_stop()`` does the same from outside)."""
        self.control.request_stop()

    def clear_stop(self) -> None:
        """Forget an earlier stop request (and RUN/stop) so the next fast/slow step runs again."""
        self.control.clear_stop()

    def pause(self) -> None:
        self.control.pause()
        self._event("pause")

    def resume_work(self) -> None:
        self.control.unpause()
        self._event("unpause")

    # Read from any thread: a step runs (whoever called it: a notebook cell, a button, the CLI), what it is
    # doing ("fast step", "slow step 2/4", "evaluate", ... or None), and whether the run is paused.
    busy = property(lambda self: self.control.busy)
    activity = property(lambda self: self.control.activity)
    paused = property(lambda self: self.control.paused)

    def _start_stage(self, idx: int) -> None:
        """Switch to stage ``idx``: its task and seed harness (a fresh population), for the learner too."""
        self.stage_idx = self.counters["stage"] = idx
        self.counters["stage_step"] = 0
        self.task = self._make_task(idx)
        self.seed_harness = stage_harness(self.config, idx, self.task)
        self.population, self.population_scores = [self.seed_harness], {}
        self._store(self.seed_harness)
        self.rundir.write_current(self.population)
        if self.learner is not None:
            self.learner.set_task(self.task, self.task.examples("train"))
            self.learner.set_population(self._train_population())
        self._event("stage", stage=idx, task=self.stages[idx].task, seed_harness=self.seed_harness.id)

    # ================================================================== persistence
    def _store(self, h: Harness) -> None:
        self.harnesses[h.id] = h
        self.rundir.store_harness(h)

    def _record(self, kind: str, **fields) -> dict:
        rec = records.make(kind, self.counters, task=self.stages[self.stage_idx].task, t0=self._t0, **fields)
        self.metrics.append(rec)
        self.rundir.append_metric(rec)
        self.control.notify(rec)
        return rec

    def _event(self, kind: str, **fields) -> None:
        rec = records.event(kind, **fields)
        self.rundir.append_event(rec)
        self.control.notify(rec)

    def _save_state(self) -> None:
        self.rundir.save_state({"counters": dict(self.counters), "population": [h.id for h in self.population],
                                "population_scores": dict(self.population_scores),
                                "seed_harness": self.seed_harness.id}, self.checkpoint)

    def _checkpoint(self) -> None:
        name = f"step_{self.counters['rl_step']:06d}"
        self.rundir.write_checkpoint(name, self.learner.save_state)
        prev, self.checkpoint = self.checkpoint, name
        self._save_state()  # state points at the new checkpoint before the old one goes
        if prev and prev != name:
            self.rundir.remove_checkpoint(prev)

    def _save_rollouts(self, trajs, name: str) -> None:
        if trajs and self.config.save_rollouts:
            self.rundir.write_rollouts(name, (t.to_json() for t in list(trajs)[:self.config.save_rollouts]))

    # ================================================================== views
    def status(self) -> dict:
        return {"run_dir": str(self.run_dir), "mode": self.config.mode, "task": self.stages[self.stage_idx].task,
                **records.counter_fields(self.counters), "population": [h.id for h in self.population],
                "best": self.best_harness().id, "elapsed": round(time.time() - self._t0, 1), "paused": self.paused,
                "stopped": self.control.stopped, "busy": self.busy, "activity": self.activity}

    def lineage(self) -> list[dict]:
        """Every harness of the run: id, name, origin, round, parents, note, in_population, score (None: not
        evaluated)."""
        return lineage_rows(self.harnesses.values(), self.population, self.population_scores)

    def close(self) -> None:
        """Release the trainer thread and models (the run directory stays resumable)."""
        self.weights.close()
        self._event("close", counters=dict(self.counters))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
