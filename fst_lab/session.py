"""Session: the one object notebooks, the CLI and the app drive. It interleaves the two loops.

    >>> from fst_lab import FSTConfig, Session
    >>> s = Session(FSTConfig(task="math", cycles=2))      # creates runs/fst-math-<time>/
    >>> s.fast_step()            # one GEPA round -> new population of K harnesses
    >>> s.slow_step(6)           # 6 RL steps, each problem's G rollouts spread over the population
    >>> s.evaluate()             # mean@k on validation with the best harness
    >>> s.run()                  # the config's schedule, cycle after cycle ("p -> w*6")
    >>> s.edit_harness(0, {"system_prompt": "..."})     # a hand edit: origin 'manual', next step uses it

Everything the session does is written to its run directory (see :mod:`fst_lab.runs`) at step
boundaries, atomically, so ``Session.resume(run_dir)`` continues with the same counters, optimizer
state and population. Create ``RUN/stop`` to end a run cleanly at the next boundary.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from fst_lab.config import ConfigError, FSTConfig, Stage
from fst_lab.harness import Harness, HarnessError, atomic_write_text, load_named
from fst_lab.runs import (CONFIG, EVENTS, METRICS, STATE, STOP, append_jsonl, atomic_write_json, read_json,
                          read_jsonl)

log = logging.getLogger(__name__)


_STATE_CORE = ("counters", "population", "population_scores", "seed_harness", "python_rng")

class SessionError(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def bare_harness(task: str = "") -> Harness:
    """No system prompt, no few-shot, no tools: the question alone (OOD-style / no-harness eval)."""
    return Harness.from_dict({"schema_version": 1, "name": "no-harness", "task": task, "inputs": ["question"],
                              "system_prompt": "", "task_template": "{question}", "few_shot": [], "tools": [],
                              "evolvable": ["system_prompt"]})


class Session:
    """Holds policy, population, task schedule, counters and metrics; steps the fast and slow loops.

    Thread-safe for one worker: every public step takes the session lock, so a UI thread can call
    ``request_stop()`` / ``pause()`` or read ``status()`` while a worker thread runs ``run()``.
    """

    def __init__(self, config: FSTConfig | dict | str | Path | None = None, run_dir: str | Path | None = None, *,
                 policy=None, progress: bool = True, _resume: bool = False):
        if config is None:
            config = FSTConfig()
        elif isinstance(config, dict):
            config = FSTConfig.from_dict(config)
        elif isinstance(config, (str, Path)):
            config = FSTConfig.load(config)
        config.validate()  # raises ConfigError before anything is written
        self.config = config
        self.progress = progress
        self.stages: list[Stage] = config.stage_list()
        # Resolve everything that can fail on bad input *before* creating the run directory.
        self._tasks: dict[int, Any] = {}
        self.stage_idx = 0
        task = self._make_task(0)
        seed = self._seed_harness_for(0)
        if run_dir is None:
            name = config.run_name or f"{config.mode}-{self.stages[0].task}-{datetime.now():%Y%m%d-%H%M%S}"
            run_dir = Path(config.runs_root) / name
        self.run_dir = Path(run_dir)
        if not _resume and (self.run_dir / CONFIG).exists():
            raise SessionError(f"{self.run_dir} already holds a run; use Session.resume('{self.run_dir}') "
                               "or choose another run_name")
        self.task = task
        self.seed_harness = seed
        self.population: list[Harness] = [seed]
        self.population_scores: dict[str, float] = {}
        self.harnesses: dict[str, Harness] = {seed.id: seed}  # lineage store: every harness ever
        self.counters = {"cycle": 0, "plan_pos": 0, "rl_step": 0, "fast_round": 0, "samples_rl": 0,
                         "samples_fast": 0, "stage": 0, "stage_step": 0, "evals": 0}
        self.checkpoint: str | None = None
        self._at_checkpoint: dict | None = None  # the state that matches the weights on disk (see _save_state)
        self.metrics: list[dict] = []
        self.last_fast = None
        self.last_trajectories: list = []
        self._policy = policy
        self._injected_policy = policy is not None
        self._base_policy = None
        self._slow = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._t0 = time.time()
        self._current_files: dict[str, str] = {}
        self.listeners: list[Callable[[dict], None]] = []  # called with every metrics/event record
        self._rng = random.Random(config.seed)
        if not _resume:
            self._init_run_dir()

    # ================================================================== construction helpers
    def _make_task(self, idx: int):
        from fst_lab.tasks import get_task

        if idx not in self._tasks:
            st = self.stages[idx]
            try:
                self._tasks[idx] = get_task(st.task, level=st.level, seed=self.config.seed, **st.task_kwargs)
            except TypeError as e:
                raise ConfigError(f"stages[{idx}] task '{st.task}': {e}") from None
        return self._tasks[idx]

    def _seed_harness_for(self, idx: int) -> Harness:
        st = self.stages[idx]
        name = st.harness or self.config.harness or st.task
        try:
            return load_named(name)
        except HarnessError as e:
            raise ConfigError(f"harness for stage {idx} ('{name}'): {e}") from None

    def _init_run_dir(self) -> None:
        d = self.run_dir
        for sub in ("harnesses/all", "harnesses/current", "populations", "checkpoints", "rollouts", "fast"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self._store(self.seed_harness)
        self._write_current()
        self._event("start", mode=self.config.mode, task=self.stages[0].task, seed_harness=self.seed_harness.id)
        self._save_state()
        # config.yaml marks a run directory (resume() requires it), so it is written last: a crash while the
        # run is being created leaves a directory that the same Session(...) call simply initialises again,
        # never one that can neither be resumed (no state.json) nor re-created (config.yaml exists).
        atomic_write_text(d / CONFIG, self.config.to_yaml())

    # ================================================================== resume
    @classmethod
    def resume(cls, run_dir: str | Path, *, policy=None, progress: bool = True) -> "Session":
        """Continue a run from its directory: same counters, optimizer state and population."""
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).exists():
            raise SessionError(f"{run_dir} is not a run directory (no {CONFIG})")
        config = FSTConfig.load(run_dir / CONFIG)
        s = cls(config, run_dir, policy=policy, progress=progress, _resume=True)
        state = read_json(run_dir / STATE, None)
        if state is None:
            raise SessionError(f"{run_dir}: no {STATE}; the run never completed its first write")
        at_ck = state.get("at_checkpoint")
        if at_ck and at_ck["counters"]["rl_step"] < state["counters"]["rl_step"]:
            # checkpoint_every > 1 and the run ended between checkpoints: the weights on disk are older than
            # the counters. Go back to the state that matches them; the steps after it are redone.
            lost = state["counters"]["rl_step"] - at_ck["counters"]["rl_step"]
            log.warning("%s: the last checkpoint (%s) is %d RL step(s) behind the run's counters; resuming "
                        "from the checkpoint and redoing them", run_dir, state.get("checkpoint"), lost)
            state = {**state, **at_ck, "rolled_back_steps": lost}
        s.counters.update(state["counters"])
        s.stage_idx = s.counters["stage"]
        s.task = s._make_task(s.stage_idx)
        s.harnesses = {}
        for p in sorted((run_dir / "harnesses" / "all").glob("*.yaml")):
            h = Harness.load(p)
            s.harnesses[h.id] = h
        s.population = [s.harnesses[i] for i in state["population"]]
        s.seed_harness = s.harnesses.get(state.get("seed_harness"), s.seed_harness)
        s.population_scores = dict(state.get("population_scores", {}))
        s.checkpoint = state.get("checkpoint")
        if state.get("python_rng") is not None:
            s._rng.setstate(_tuplify(state["python_rng"]))
        # metrics beyond the last completed step (written just before a crash) are dropped: they are redone
        recs = read_jsonl(run_dir / METRICS)
        keep = [r for r in recs if not (r.get("kind") in ("slow", "eval") and r.get("rl_step", 0) > s.counters["rl_step"])
                and not (r.get("kind") == "fast" and r.get("round", 0) > s.counters["fast_round"])]
        if len(keep) != len(recs):
            atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in keep))
        s.metrics = keep
        if (run_dir / STOP).exists():
            (run_dir / STOP).unlink()
        s._write_current()
        s._at_checkpoint = {k: state[k] for k in _STATE_CORE if k in state}
        s._event("resume", counters=dict(s.counters), checkpoint=s.checkpoint,
                 rolled_back_steps=state.get("rolled_back_steps", 0))
        if s.checkpoint and s.config.mode != "gepa":
            s._ensure_slow()
            s._slow.load_state(run_dir / "checkpoints" / s.checkpoint)
        return s

    # ================================================================== policy / loops
    @property
    def policy(self):
        """The live policy (trained weights once the slow loop exists)."""
        if self._slow is not None:
            return self._slow.policy
        if self._policy is None:
            from fst_lab.models import load_policy

            self._policy = load_policy(self.config.model)
        return self._policy

    def base_policy(self):
        """The start weights, frozen (for the channel ablation and KL)."""
        if self._base_policy is None:
            if self._injected_policy:
                if self._slow is not None and hasattr(self._slow, "base_policy"):
                    self._base_policy = self._slow.base_policy()
                else:
                    self._base_policy = copy.deepcopy(self._policy) if self._slow is None else None
                if self._base_policy is None:
                    raise SessionError("base weights of an injected policy are only known before the first slow step")
            else:
                from fst_lab.models import load_policy

                self._base_policy = load_policy(self.config.model)
        return self._base_policy

    def fast_config(self):
        from fst_lab.fast import FastConfig

        kw = dict(self.config.fast)
        kw.setdefault("population_size", self.config.population_size)
        kw.setdefault("seed", self.config.seed)
        if self.config.max_new_tokens:  # "for all rollouts": GEPA's evaluations too, as slow_config does
            kw.setdefault("max_new_tokens", self.config.max_new_tokens)
        try:
            return FastConfig(**kw)
        except TypeError as e:
            raise ConfigError(f"fast: {e}") from None

    def slow_config(self):
        from fst_lab.slow import SlowConfig

        kw = dict(self.config.slow)
        kw.update(num_generations=self.config.num_generations, population_size=self.config.population_size)
        kw.setdefault("prompts_per_step", self.config.prompts_per_step)
        kw.setdefault("seed", self.config.seed)
        kw.setdefault("report_to", self.config.report_to)
        if self.config.max_new_tokens:
            kw.setdefault("max_completion_length", self.config.max_new_tokens)
        try:
            return SlowConfig(**kw)
        except TypeError as e:
            raise ConfigError(f"slow: {e}") from None

    def _ensure_slow(self):
        if self._slow is None:
            if self.config.mode == "gepa":
                raise SessionError("mode 'gepa' freezes the weights: no slow steps")
            from fst_lab.slow import SlowLearner

            if self._injected_policy and self._base_policy is None:
                self._base_policy = copy.deepcopy(self._policy)
            pol = self._policy if self._policy is not None else self.policy
            self._slow = SlowLearner(pol, self.task, list(self._train_population()), self.slow_config(),
                                     output_dir=str(self.run_dir / "trainer"))
            if hasattr(self._slow, "set_task"):
                self._slow.set_task(self.task, self.task.examples("train"))
        return self._slow

    def _train_population(self) -> list[Harness]:
        """Exactly K harnesses for the slow loop (cycled when the population is smaller)."""
        K = self.config.population_size
        pop = self._ranked_population()
        if self.config.mode == "rl":
            pop = [self.seed_harness]
        return [pop[i % len(pop)] for i in range(K)]

    def _ranked_population(self) -> list[Harness]:
        return sorted(self.population, key=lambda h: -self.population_scores.get(h.id, float("-inf")))

    def best_harness(self) -> Harness:
        return self._ranked_population()[0]

    # ================================================================== steps
    def fast_step(self, *, train_examples=None, val_examples=None) -> Any:
        """One GEPA round from the current population under the current weights -> new population."""
        if self.config.mode == "rl":
            raise SessionError("mode 'rl' keeps the seed harness fixed: no fast steps")
        with self._lock:
            self._sync_hand_edits()
            from fst_lab.fast import fast_step

            rnd = self.counters["fast_round"] + 1
            train, val = self._fast_examples(rnd)
            train = list(train_examples) if train_examples is not None else train
            val = list(val_examples) if val_examples is not None else val
            t0 = time.time()
            res = fast_step(self.policy, self.task, list(self.population), train, val, config=self.fast_config(),
                            round=rnd, run_dir=str(self.run_dir / "fast" / f"round_{rnd:04d}"),
                            progress=self.progress)
            for h in res.population:
                self._store(h)
            self.population = list(res.population)
            self.population_scores = dict(res.val_scores)
            self.last_fast = res
            self.counters["fast_round"] = rnd
            # every rollout the fast loop spent (GEPA's metric calls + re-scoring the old population)
            self.counters["samples_fast"] += int(getattr(res, "rollouts", None) or res.metric_calls)
            rec = {"kind": "fast", "round": rnd, **self._counter_fields(), **_fast_summary(res),
                   "seconds": time.time() - t0}
            self._write_current()
            self._record(rec)
            self._save_state()
            self._event("fast", round=rnd, population=[h.id for h in self.population],
                        best=res.best_id, accepted=getattr(res, "accepted", None))
            return res

    def slow_step(self, n: int = 1) -> list[dict]:
        """``n`` RL optimizer steps on the current population; returns one metrics dict per step."""
        if self.config.mode == "gepa":
            raise SessionError("mode 'gepa' freezes the weights: no slow steps")
        out = []
        with self._lock:
            for _ in self._progress(range(n), desc="slow steps", total=n, disable=n <= 1):
                if self._stop_requested():
                    break
                self._sync_hand_edits()
                slow = self._ensure_slow()
                slow.set_population(self._train_population())
                t0 = time.time()
                m = slow.step(1)
                m = m[-1] if isinstance(m, list) and m else (m or {})
                self.counters["rl_step"] += 1
                self.counters["stage_step"] += 1
                G, P = self.config.num_generations, self.config.prompts_per_step
                self.counters["samples_rl"] += int(m.get("samples", G * P))
                rec = {"kind": "slow", **self._counter_fields(), **_jsonable(m), "seconds": time.time() - t0,
                       "population": [h.id for h in self._train_population()]}
                self._save_rollouts(getattr(slow, "last_trajectories", None), f"slow_{self.counters['rl_step']:06d}")
                # The metrics line goes first: the checkpoint also writes state.json, and a step the state
                # counts must already be in metrics.jsonl (a crash in between would lose its record for
                # good). A record without a matching state is dropped by resume() and the step redone.
                self._record(rec)
                if self.counters["rl_step"] % self.config.checkpoint_every == 0:
                    self._checkpoint()
                self._maybe_advance_stage()
                self._save_state()
                out.append(rec)
        return out

    def _fast_examples(self, rnd: int):
        """GEPA's examples for round ``rnd``: a rotating window of the train split (reflection set) and
        a disjoint window used for Pareto selection. Validation stays held out for evaluate()."""
        train = self.task.examples("train")
        nt, nv = self.config.fast_train_size, self.config.fast_val_size
        start = ((rnd - 1) * (nt + nv)) % max(1, len(train))
        window = [train[(start + i) % len(train)] for i in range(min(len(train), nt + nv))]
        if len(window) < nt + nv:  # tiny datasets: reuse examples for both sets
            return window[:nt] or window, window[nt:] or window
        return window[:nt], window[nt:nt + nv]

    # ================================================================== evaluation
    def evaluate(self, split: str = "val", *, n: int | None = None, k: int | None = None,
                 harness: str | Harness = "best", weights: str = "trained", record: bool = True,
                 temperature: float | None = None) -> dict:
        """mean@k reward on a split. harness: best | seed | none | population | a Harness; weights: trained | base."""
        from fst_lab.rollout import rollout

        with self._lock:
            n = n or self.config.eval_size
            k = k or self.config.eval_k
            exs = self.task.examples(split, n)
            pol = self.base_policy() if weights == "base" else self.policy
            targets: list[tuple[str, Harness]]
            if isinstance(harness, Harness):
                targets = [("custom", harness)]
            elif harness == "best":
                targets = [("best", self.best_harness())]
            elif harness == "seed":
                targets = [("seed", self.seed_harness)]
            elif harness == "none":
                targets = [("none", bare_harness(self.stages[self.stage_idx].task))]
            elif harness == "population":
                targets = [(h.id, h) for h in self.population]
            else:
                raise ValueError(f"harness must be best | seed | none | population | a Harness, got {harness!r}")
            result: dict[str, Any] = {"split": split, "n": len(exs), "k": k, "weights": weights}
            trajs_all = []
            for label, h in targets:
                temp = temperature if temperature is not None else (h.loop.temperature if k > 1 else 0.0)
                trajs = rollout(pol, h, exs, self.task, n_samples=k, temperature=temp,
                                max_new_tokens=self.config.max_new_tokens, seed=self.config.seed)
                trajs_all += trajs
                rewards = [t.reward for t in trajs]
                result[f"reward_{label}" if len(targets) > 1 or label not in ("best",) else "reward"] = \
                    sum(rewards) / max(1, len(rewards))
                result.setdefault("harness_ids", {})[label] = h.id
            if "reward" not in result:
                result["reward"] = max(v for key, v in result.items() if key.startswith("reward_"))
            self.last_trajectories = trajs_all
            if record:
                self.counters["evals"] += 1
                rec = {"kind": "eval", **self._counter_fields(), "harness": harness if isinstance(harness, str)
                       else harness.id, **{k2: v for k2, v in result.items() if k2 != "harness_ids"}}
                if self._slow is not None and hasattr(self._slow, "kl_probe"):
                    try:
                        rec["kl_probe"] = float(self._slow.kl_probe())
                    except Exception as e:  # KL is a diagnostic; never fail an evaluation over it
                        log.warning("kl probe failed: %s", e)
                self._save_rollouts(trajs_all, f"eval_{self.counters['evals']:04d}")
                self._record(rec)
                self._save_state()
            return result

    def channel_ablation(self, n: int | None = None) -> dict[str, float]:
        """The paper's 2x2: {base, trained weights} x {seed, evolved harness} -> mean reward."""
        out = {}
        for w in ("base", "trained"):
            for h in ("seed", "best"):
                r = self.evaluate(n=n, harness=h, weights=w, record=False)
                out[f"{w}_weights+{h if h == 'seed' else 'evolved'}_harness"] = r["reward"]
        self._event("ablation", **out)
        append_jsonl(self.run_dir / METRICS, {"kind": "ablation", **self._counter_fields(), **out})
        return out

    def plasticity_probe(self, task: str, *, level: int = 1, steps: int = 2) -> dict:
        """From the current weights, a fresh RL run on a new task (and the same from the base weights)."""
        from fst_lab.slow import SlowLearner
        from fst_lab.tasks import get_task

        new_task = get_task(task, level=level, seed=self.config.seed)
        seed = load_named(task)
        out = {}
        for label, pol in (("trained", self.policy), ("base", self.base_policy())):
            pol2 = self._slow.copy_policy() if (label == "trained" and self._slow is not None) else copy.deepcopy(pol)
            with SlowLearner(pol2, new_task, [seed] * self.config.population_size, self.slow_config(),
                             output_dir=str(self.run_dir / "plasticity" / label)) as learner:
                learner.set_task(new_task, new_task.examples("train"))
                out[label] = [float(learner.step(1)[-1].get("reward", 0.0)) for _ in range(steps)]
        self._event("plasticity", task=task, **out)
        return out

    # ================================================================== hand edits
    def edit_harness(self, target: int | str | None = None, updates: dict[str, str] | Harness | None = None, *,
                     note: str = "") -> Harness:
        """A hand edit: a new candidate (origin ``manual``) replacing ``target`` from the next step on.

        ``target`` is a population index, a harness id, or None (the best). ``updates`` maps component
        names (system_prompt, task_template, few_shot, tool_description_<name>) to new text, or is a
        whole Harness. The edit and its diff are recorded in events.jsonl and survive resume.
        """
        with self._lock:
            idx = self._resolve_target(target)
            old = self.population[idx]
            if isinstance(updates, Harness):
                d = updates.to_dict(with_lineage=False)
                d["lineage"] = {"parents": [old.id], "origin": "manual", "round": self.counters["fast_round"],
                                "note": note}
                new = Harness.from_dict(d, source="<manual edit>")
            elif isinstance(updates, dict) and updates:
                new = old.with_components(updates, origin="manual", round=self.counters["fast_round"],
                                          parents=[old.id], note=note)
            else:
                raise HarnessError("edit_harness needs a non-empty {component: text} mapping or a Harness")
            self._apply_manual(idx, old, new, source="api")
            return new

    def _resolve_target(self, target) -> int:
        if target is None:
            return self.population.index(self.best_harness())
        if isinstance(target, int):
            if not -len(self.population) <= target < len(self.population):
                raise IndexError(f"population has {len(self.population)} harnesses; no index {target}")
            return target % len(self.population)
        for i, h in enumerate(self.population):
            if h.id == target or h.name == target:
                return i
        raise KeyError(f"no harness '{target}' in the population {[h.id for h in self.population]}")

    def _apply_manual(self, idx: int, old: Harness, new: Harness, *, source: str) -> None:
        diff = old.diff(new)
        self.population[idx] = new
        # inherits its parent's score until the next fast round re-scores it (keeps it selectable as best)
        if old.id in self.population_scores:
            self.population_scores[new.id] = self.population_scores[old.id] + 1e-9
        self._store(new)
        self._write_current()
        self._event("edit", source=source, parent=old.id, id=new.id, diff=diff)
        self._save_state()
        if self._slow is not None:
            self._slow.set_population(self._train_population())

    def _write_current(self) -> None:
        cur = self.run_dir / "harnesses" / "current"
        cur.mkdir(parents=True, exist_ok=True)
        wanted = {}
        for i, h in enumerate(self.population):
            fname = f"{i}_{h.name}.yaml"
            wanted[fname] = h.id
            atomic_write_text(cur / fname, h.dumps())
        for p in cur.glob("*.yaml"):
            if p.name not in wanted:
                p.unlink()
        self._current_files = wanted

    def _sync_hand_edits(self) -> None:
        """Pick up hand edits of RUN/harnesses/current/*.yaml (invalid files are reported, not used)."""
        cur = self.run_dir / "harnesses" / "current"
        for fname, hid in list(self._current_files.items()):
            p = cur / fname
            if not p.exists():
                continue
            try:
                h = Harness.load(p)
            except HarnessError as e:
                self._event("edit_rejected", file=str(p), error=str(e))
                log.warning("ignoring invalid hand edit: %s", e)
                continue
            if h.content_id() == hid:
                continue
            idx = next((i for i, x in enumerate(self.population) if x.id == hid), None)
            if idx is None:
                continue
            old = self.population[idx]
            d = h.to_dict(with_lineage=False)
            d["lineage"] = {"parents": [old.id], "origin": "manual", "round": self.counters["fast_round"],
                            "note": f"hand edit of {fname}"}
            self._apply_manual(idx, old, Harness.from_dict(d, source=str(p)), source=str(p))

    # ================================================================== run loop
    def run(self, cycles: int | None = None, *, evaluate: bool | None = None) -> dict:
        """Follow the schedule for ``cycles`` cycles (default: the config's, minus those already done)."""
        plan = self.config.cycle_plan()
        total = cycles if cycles is not None else max(0, self.config.cycles - self.counters["cycle"])
        evaluate = self.config.eval_every_cycle if evaluate is None else evaluate
        self._stop.clear()
        done = 0
        bar = self._progress(total=total * len(plan), desc=f"{self.config.mode} cycles")
        if bar is not None:
            bar.update(self.counters["plan_pos"])
        try:
            while done < total:
                for pos in range(self.counters["plan_pos"], len(plan)):
                    self._unpaused.wait()
                    if self._stop_requested():
                        self._event("stop", counters=dict(self.counters))
                        return self.status()
                    if plan[pos] == "p":
                        self.counters["plan_pos"] = pos + 1
                        try:
                            self.fast_step()
                        except BaseException:
                            self.counters["plan_pos"] = pos
                            raise
                    else:
                        self.counters["plan_pos"] = pos + 1
                        try:
                            self.slow_step(1)
                        except BaseException:
                            self.counters["plan_pos"] = pos
                            raise
                    if bar is not None:
                        bar.update(1)
                with self._lock:
                    self.counters["cycle"] += 1
                    self.counters["plan_pos"] = 0
                    # Snapshot before evaluate(): it saves state.json, and a cycle the state counts as done
                    # must already have its population snapshot (a crash in between would lose it).
                    self._snapshot_population()
                    if evaluate:
                        self.evaluate()
                    self._save_state()
                done += 1
        finally:
            if bar is not None:
                bar.close()
        return self.status()

    def request_stop(self) -> None:
        """Stop at the next step boundary (same as creating RUN/stop)."""
        self._stop.set()
        self._unpaused.set()

    def clear_stop(self) -> None:
        """Forget an earlier stop request (and RUN/stop) so the next fast/slow step runs again."""
        self._stop.clear()
        (self.run_dir / STOP).unlink(missing_ok=True)

    def pause(self) -> None:
        self._unpaused.clear()
        self._event("pause")

    def resume_work(self) -> None:
        self._unpaused.set()
        self._event("unpause")

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def _stop_requested(self) -> bool:
        if (self.run_dir / STOP).exists():
            self._stop.set()
        return self._stop.is_set()

    def _maybe_advance_stage(self) -> None:
        st = self.stages[self.stage_idx]
        if st.steps is None or self.counters["stage_step"] < st.steps or self.stage_idx + 1 >= len(self.stages):
            return
        self.stage_idx += 1
        self.counters["stage"] = self.stage_idx
        self.counters["stage_step"] = 0
        self.task = self._make_task(self.stage_idx)
        seed = self._seed_harness_for(self.stage_idx)
        self.seed_harness = seed
        self.population = [seed]
        self.population_scores = {}
        self._store(seed)
        self._write_current()
        if self._slow is not None:
            self._slow.set_task(self.task, self.task.examples("train"))
            self._slow.set_population(self._train_population())
        self._event("stage", stage=self.stage_idx, task=self.stages[self.stage_idx].task, seed_harness=seed.id)

    # ================================================================== persistence
    def _counter_fields(self) -> dict:
        c = self.counters
        return {"cycle": c["cycle"], "rl_step": c["rl_step"], "fast_round": c["fast_round"],
                "stage": c["stage"], "task": self.stages[self.stage_idx].task,
                "samples_rl": c["samples_rl"], "samples_fast": c["samples_fast"],
                "samples": c["samples_rl"] + c["samples_fast"], "time": round(time.time() - self._t0, 3),
                "ts": _now()}

    def _store(self, h: Harness) -> None:
        self.harnesses[h.id] = h
        p = self.run_dir / "harnesses" / "all" / f"{h.id}.yaml"
        if not p.exists():
            h.save(p)

    def _record(self, rec: dict) -> None:
        self.metrics.append(rec)
        append_jsonl(self.run_dir / METRICS, rec)
        self._notify(rec)

    def _event(self, kind: str, **fields) -> None:
        rec = {"event": kind, "ts": _now(), **_jsonable(fields)}
        append_jsonl(self.run_dir / EVENTS, rec)
        self._notify(rec)

    def _notify(self, rec: dict) -> None:
        for fn in list(self.listeners):
            try:
                fn(rec)
            except Exception as e:  # a broken UI callback must not break training
                log.warning("listener failed: %s", e)

    def _save_state(self) -> None:
        core = {"counters": dict(self.counters), "population": [h.id for h in self.population],
                "population_scores": dict(self.population_scores), "seed_harness": self.seed_harness.id,
                "python_rng": self._rng.getstate()}
        # ``at_checkpoint``: the newest state whose RL step is the checkpoint's, i.e. that matches the
        # weights on disk (fast rounds and stage switches after the checkpoint's step are included).
        # With checkpoint_every > 1 a run that ends between checkpoints resumes from it.
        ck_step = int(self.checkpoint.rsplit("_", 1)[1]) if self.checkpoint else 0
        if self.counters["rl_step"] == ck_step or self._at_checkpoint is None:
            self._at_checkpoint = core
        state = {**core, "checkpoint": self.checkpoint, "at_checkpoint": self._at_checkpoint, "updated": _now()}
        atomic_write_json(self.run_dir / STATE, state)

    def _checkpoint(self) -> None:
        name = f"step_{self.counters['rl_step']:06d}"
        final = self.run_dir / "checkpoints" / name
        tmp = self.run_dir / "checkpoints" / f".{name}.tmp"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        self._slow.save_state(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prev = self.checkpoint
        self.checkpoint = name
        self._save_state()  # state points at the new checkpoint before the old one goes
        if prev and prev != name:
            shutil.rmtree(self.run_dir / "checkpoints" / prev, ignore_errors=True)

    def _snapshot_population(self) -> None:
        rec = {"cycle": self.counters["cycle"], "rl_step": self.counters["rl_step"],
               "fast_round": self.counters["fast_round"], "stage": self.counters["stage"],
               "members": [{"id": h.id, "name": h.name, "origin": h.lineage.origin, "round": h.lineage.round,
                            "parents": list(h.lineage.parents), "score": self.population_scores.get(h.id)}
                           for h in self.population],
               "scores": dict(self.population_scores)}
        atomic_write_text(self.run_dir / "populations" / f"cycle_{self.counters['cycle']:04d}.yaml",
                          yaml.safe_dump(rec, sort_keys=False))

    def _save_rollouts(self, trajs, name: str) -> None:
        if not trajs or not self.config.save_rollouts:
            return
        lines = []
        for t in list(trajs)[: max(self.config.save_rollouts, 0) or None]:
            d = t.to_json() if hasattr(t, "to_json") else dict(t)
            lines.append(json.dumps(d, default=str, ensure_ascii=False) + "\n")
        atomic_write_text(self.run_dir / "rollouts" / f"{name}.jsonl", "".join(lines))

    # ================================================================== views
    def status(self) -> dict:
        c = self.counters
        return {"run_dir": str(self.run_dir), "mode": self.config.mode, "task": self.stages[self.stage_idx].task,
                "cycle": c["cycle"], "rl_step": c["rl_step"], "fast_round": c["fast_round"],
                "samples": c["samples_rl"] + c["samples_fast"], "samples_rl": c["samples_rl"],
                "samples_fast": c["samples_fast"], "stage": c["stage"], "population": [h.id for h in self.population],
                "best": self.best_harness().id, "elapsed": round(time.time() - self._t0, 1), "paused": self.paused,
                "stopped": self._stop.is_set()}

    def lineage(self) -> list[dict]:
        return [{"id": h.id, "name": h.name, "origin": h.lineage.origin, "round": h.lineage.round,
                 "parents": list(h.lineage.parents), "note": h.lineage.note, "in_population": h in self.population,
                 "score": self.population_scores.get(h.id)} for h in self.harnesses.values()]

    def _progress(self, iterable: Iterable | None = None, **kw):
        if not self.progress:
            kw["disable"] = True
        from tqdm.auto import tqdm

        if iterable is None and kw.get("disable"):
            return None
        return tqdm(iterable, **kw) if iterable is not None else tqdm(**kw)

    def close(self) -> None:
        """Release the trainer thread and models (the run directory stays resumable)."""
        if self._slow is not None:
            self._slow.close()
            self._slow = None
        self._event("close", counters=dict(self.counters))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fast_summary(res) -> dict:
    if hasattr(res, "summary"):
        return _jsonable(res.summary())
    d = res.to_json() if hasattr(res, "to_json") else dict(vars(res))
    keep = {}
    for k, v in d.items():
        if k in ("population", "per_instance", "trajectories"):
            continue
        keep[k] = v
    scores = d.get("val_scores") or {}
    if scores:
        keep["best_val"] = max(scores.values())
    keep["population"] = [h.id for h in res.population]
    return _jsonable(keep)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.to_json() if hasattr(o, "to_json") else str(o)))


def _tuplify(x):
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x
