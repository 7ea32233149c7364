"""The session side of consolidation: ``Session.consolidate(n)`` and RL + distillation in a run.

:mod:`fst_lab.consolidate` has the step itself (:class:`~fst_lab.consolidate.Consolidator`); this module
runs it on a session's live weights and run directory:

* **phases**: a consolidation phase lasts while nothing else changes the weights or the harnesses (same RL
  step, fast round, stage, teachers and student). Its first step takes the teacher snapshot; a slow or fast
  step in between starts a new phase with a new snapshot.
* **checkpoints**: after every consolidation step (the weights changed), under the RL step's checkpoint name
  (replaced in place): the slow learner's files plus a ``consolidate/`` folder with the phase's teacher
  snapshot, optimizer and counters, so a run stopped mid-phase resumes with the same teacher.
* **records**: one ``consolidate`` record per step (:mod:`fst_lab.records`), counters ``consolidate_step`` and
  ``samples_distill`` (kept out of ``samples``); a ``consolidate`` event says what was distilled from which
  harness into which student harness.

    >>> s = Session.resume("runs/my-run")
    >>> s.consolidate(4)          # -> session_consolidate(s, 4)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

from fst_lab.config import ConsolidateConfig
from fst_lab.consolidate import (ConsolidationError, Consolidator, DistillTerm, evolved_teachers,
                                 minimal_harness)
from fst_lab.harness import Harness

from fst_lab.runs import CONSOLIDATE_DIR as CHECKPOINT_SUBDIR  # in a session checkpoint, next to the slow learner's files


def _phase_key(session, teachers: Sequence[Harness], student: Harness) -> str:
    """A consolidation phase lasts while nothing else changes the weights or the harnesses: the same RL
    step, fast round, stage, teachers and student. A new phase takes a new teacher snapshot."""
    c = session.counters
    return (f"rl{c['rl_step']}|fast{c['fast_round']}|stage{c['stage']}|teachers:{','.join(h.id for h in teachers)}"
            f"|student:{student.id}")


def session_consolidate(session, n: int | None = None) -> list[dict]:
    """``Session.consolidate(n)``: ``n`` consolidation steps on the session's live weights (default
    ``config.consolidate.steps``), one ``consolidate`` record each, a checkpoint after every step (the
    slow learner's files plus this phase's teacher snapshot and optimizer), the stop file and pause honoured
    between steps. Raises :class:`ConsolidationError` before touching anything when no harness has evolved.
    """
    from fst_lab import records

    cfg = getattr(session.config, "consolidate", None)
    if not isinstance(cfg, ConsolidateConfig):
        cfg = ConsolidateConfig(**(cfg or {})) if isinstance(cfg, dict) else ConsolidateConfig()
    if cfg.max_new_tokens is None:
        cfg = dataclasses.replace(cfg, max_new_tokens=session.config.max_new_tokens)
    n = cfg.steps if n is None else int(n)
    if session.config.mode == "gepa":
        raise ConsolidationError("mode 'gepa' freezes the weights: no consolidation steps")
    # Everything that can refuse does so before anything is written or built.
    teachers = evolved_teachers(session.population, session.seed_harness, cfg.teacher, session.population_scores)
    student = minimal_harness(session.seed_harness, cfg.student, cfg.student_system_prompt)
    out: list[dict] = []
    with session.control.paced(n, "consolidation step", "consolidate", session._lock) as steps:
        for i in steps:
            cons = _consolidator(session, teachers, student, cfg)
            t0 = time.time()
            m = cons.step(1)[-1]
            session.counters["consolidate_step"] += 1
            session.counters["samples_distill"] += int(m["rollouts"])
            session._save_rollouts(cons.last_trajectories, f"consolidate_{session.counters['consolidate_step']:06d}")
            fields = {k: v for k, v in m.items() if k != "step"}
            rec = session._record(records.CONSOLIDATE, **fields, seconds=time.time() - t0)
            _checkpoint(session, cons)
            session._save_state()
            if not out:  # what is distilled from which harness, once per call
                session._event("consolidate", phase=session._consolidation[0], method=cfg.method,
                               teacher=[h.id for h in teachers], teacher_names=[h.name for h in teachers],
                               student=cfg.student, student_harness=student.id,
                               consolidate_step=session.counters["consolidate_step"])
            out.append(rec)
            session.control.notify(records.progress("consolidate", i + 1, n, kl_teacher=rec.get("kl_teacher")))
    return out


def _consolidator(session, teachers, student, cfg) -> Consolidator:
    """The live phase's Consolidator; a new one (new teacher snapshot) when the phase changed; restored from
    the session's checkpoint when a resumed run stopped in the middle of a phase."""
    key = _phase_key(session, teachers, student)
    live = getattr(session, "_consolidation", None)
    if live is not None and live[0] == key:
        return live[1]
    learner = session._ensure_slow()
    cons = Consolidator(learner.policy, session.task, teachers, student, cfg)
    ck = session.checkpoint and session.rundir.checkpoint_dir(session.checkpoint) / CHECKPOINT_SUBDIR
    meta = Consolidator.saved_meta(ck) if ck else None
    if meta and meta.get("phase") == key:
        cons.load_state(ck, weights=False)  # the learner's checkpoint already restored the weights
    session._consolidation = (key, cons)
    return cons


def _checkpoint(session, cons: Consolidator) -> None:
    """Checkpoint after a consolidation step (the weights changed): the slow learner's state plus this
    phase's consolidation state, under the RL step's checkpoint name (replaced in place)."""
    name = f"step_{session.counters['rl_step']:06d}"
    key = session._consolidation[0]

    def save(d):
        session.learner.save_state(d)
        cons.save_state(Path(d) / CHECKPOINT_SUBDIR, extra={"phase": key,
                                                            "consolidate_step": session.counters["consolidate_step"]})

    session.rundir.write_checkpoint(name, save)
    prev, session.checkpoint = session.checkpoint, name
    session._save_state()
    if prev and prev != name:
        session.rundir.remove_checkpoint(prev)


def rl_distill_term(session, learner) -> "DistillTerm | None":
    """The RL + distillation term for a session's learner (``consolidate.rl_coef`` > 0), else None.

    ``Session._ensure_slow`` sets ``learner.extra_loss = rl_distill_term(self, learner)`` right after building
    the learner: the student harness is the config's minimal harness of the session's seed harness."""
    cfg = getattr(session.config, "consolidate", None)
    if not isinstance(cfg, ConsolidateConfig) or cfg.rl_coef == 0.0:
        return None
    student = minimal_harness(session.seed_harness, cfg.student, cfg.student_system_prompt)
    return DistillTerm(learner, student, cfg.rl_coef, support=cfg.kl_support, top_k=cfg.top_k)
