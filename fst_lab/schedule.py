"""The schedule: a session's stages (task after task) and cycles (``"p -> w*6"``: a fast step, then
six slow steps), run resumably.

``Session.run()`` calls :func:`run_schedule`. The position inside the cycle (``plan_pos``) is counted
*before* a step starts and restored if the step raises, so a run stopped or killed mid-cycle resumes
at the step it had not finished. Pause and stop are honoured between steps.
"""

from __future__ import annotations

from fst_lab.config import ConfigError, FSTConfig
from fst_lab.errors import FstLabError
from fst_lab.control import progress_bar
from fst_lab.harness import Harness, HarnessError, default_harness_dir, load_named
from fst_lab.tools import warn_unimplemented

GENERIC = "generic"  # harnesses/generic.yaml


def stage_task(config: FSTConfig, idx: int):
    """The task of stage ``idx`` (a ConfigError naming the stage if its arguments don't fit)."""
    from fst_lab.tasks import get_task

    st = config.stage_list()[idx]
    where = f"stages[{idx}].task_kwargs" if config.stages else "task_kwargs"
    try:
        return get_task(st.task, level=st.level, seed=config.seed, **st.task_kwargs)
    except FstLabError:
        raise  # TaskDataError etc. already name the file and line
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task '{st.task}': {e}", path=where) from None


def stage_harness_name(config: FSTConfig, idx: int) -> str:
    """The seed harness stage ``idx`` starts from: the stage's, else the config's, else the task's own file in the
    harness dir, else ``generic`` (the task-agnostic harness: what a ``jsonl`` or user-registered task gets)."""
    st = config.stage_list()[idx]
    if st.harness or config.harness:
        return st.harness or config.harness
    return st.task if (default_harness_dir() / f"{st.task}.yaml").exists() else GENERIC


def stage_harness(config: FSTConfig, idx: int, task=None) -> Harness:
    """The seed harness of stage ``idx`` (:func:`stage_harness_name`), loaded; with ``task``, a warning if it
    declares tools the task does not implement (:func:`fst_lab.tools.warn_unimplemented`)."""
    name = stage_harness_name(config, idx)
    try:
        h = load_named(name)
    except HarnessError as e:
        st = config.stage_list()[idx]
        where = f"stages[{idx}].harness" if config.stages and st.harness else ("harness" if config.harness else None)
        raise ConfigError(f"harness for stage {idx} ('{name}'): {e}", path=where) from None
    if task is not None:
        warn_unimplemented(h, task, f"seed harness of stage {idx} ('{name}')")
    return h


def stage_done(stages, idx: int, stage_step: int) -> bool:
    """Stage ``idx`` has run its ``steps`` RL steps and a next stage exists."""
    st = stages[idx]
    return st.steps is not None and stage_step >= st.steps and idx + 1 < len(stages)


def fast_window(train: list, n_train: int, n_val: int, rnd: int) -> tuple[list, list]:
    """GEPA's examples for fast round ``rnd``: a window of the train split rotating round by round, split
    into the reflection set and a disjoint Pareto set. Validation stays held out for evaluate()."""
    start = ((rnd - 1) * (n_train + n_val)) % max(1, len(train))
    window = [train[(start + i) % len(train)] for i in range(min(len(train), n_train + n_val))]
    if len(window) < n_train + n_val:  # tiny datasets: reuse examples for both sets
        return window[:n_train] or window, window[n_train:] or window
    return window[:n_train], window[n_train:n_train + n_val]


def run_schedule(session, cycles: int, evaluate: bool) -> None:
    """Run ``cycles`` cycles of ``session.config.cycle_plan()``; each cycle ends with a population
    snapshot (and an evaluation when ``evaluate``). Returns early when a stop is requested."""
    plan = session.config.cycle_plan()
    steps = {"p": session.fast_step, "w": lambda: session.slow_step(1),
             "c": lambda: session.consolidate(1)}  # 'c': consolidation (fst_lab.consolidate)
    counters, control = session.counters, session.control
    control.forget_stop()  # a stop requested before this run started is forgotten (the file is not)
    act = control.current()  # the run's own activity label (Session.run marks it), kept up to date here
    bar = progress_bar(session.progress, total=cycles * len(plan), desc=f"{session.config.mode} cycles")
    if bar is not None:
        bar.update(counters["plan_pos"])
    try:
        for done in range(cycles):
            label = f"run: cycle {done + 1}/{cycles}"
            for pos in range(counters["plan_pos"], len(plan)):
                if control.paused:
                    act[0] = f"paused ({label})"
                    control.wait_unpaused()
                act[0] = label
                if control.stop_requested():
                    session._event("stop", counters=dict(counters))
                    return
                counters["plan_pos"] = pos + 1
                try:
                    steps[plan[pos]]()
                except BaseException:
                    counters["plan_pos"] = pos
                    raise
                if bar is not None:
                    bar.update(1)
            end_cycle(session, evaluate)
    finally:
        if bar is not None:
            bar.close()


def end_cycle(session, evaluate: bool) -> None:
    """Count a finished cycle: population snapshot, evaluation (optional), state."""
    with session._working("end of cycle"):
        session.counters["cycle"] += 1
        session.counters["plan_pos"] = 0
        # Snapshot before evaluate(): it saves state.json, and a cycle the state counts as done must
        # already have its population snapshot (a crash in between would lose it).
        session.rundir.write_population(session.counters, session.population, session.population_scores)
        if evaluate:
            session.evaluate()
        session._save_state()
