"""RunDir: the one object that writes a run directory (layout, atomic writes, checkpoints, stop file).

The session, the CLI and the app go through it; nothing else spells a path inside a run. Reading a
run someone else wrote is :mod:`fst_lab.runs` (pure loaders, no torch, no pickles); both share the
layout names defined there.

    >>> rd = RunDir("runs/demo")
    >>> rd.request_stop()            # the run stops cleanly at its next step boundary
    >>> rd.stop_requested(), rd.read_state()["counters"]["rl_step"]

Every file is written whole to a temporary file and renamed into place (``os.replace``), so a crash
leaves the old file or the new one, never half of one. JSONL files are appended line by line with an
fsync; a torn last line is skipped by readers and never glued to the next record. A checkpoint is
written into ``checkpoints/.<name>.tmp`` and renamed when complete; ``state.json`` names it only then.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from fst_lab.harness import Harness, HarnessError, atomic_write_text
from fst_lab.records import json_default, now
from fst_lab.runs import (CHECKPOINTS, CONFIG, EVENTS, FAST, HARNESSES_ALL, HARNESSES_CURRENT, METRICS, POPULATIONS,
                          ROLLOUTS, STATE, STOP, RunDirError, read_json, read_jsonl)

log = logging.getLogger(__name__)

SUBDIRS = (HARNESSES_ALL, HARNESSES_CURRENT, POPULATIONS, CHECKPOINTS, ROLLOUTS, FAST)


# ---------------------------------------------------------------------------- atomic writes
def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Append one line and fsync. A crash can leave at most a torn *last* line, which readers skip; the
    next append starts on a fresh line, so the torn one never swallows a later record."""
    line = (json.dumps(obj, default=json_default, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab+") as f:  # writes always go to the end; reading the last byte is allowed
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class RunDir:
    """One run directory on disk. Holds no training state; safe to create from any thread or process."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._current: dict[str, str] = {}  # harnesses/current file name -> harness id we last wrote there
        self._at_checkpoint: dict | None = None  # the newest state that matches the weights on disk

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ layout
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def current_dir(self) -> Path:
        return self.path / HARNESSES_CURRENT

    @property
    def trainer_dir(self) -> Path:
        """Scratch output directory of TRL's trainer."""
        return self.path / "trainer"

    def fast_dir(self, rnd: int) -> Path:
        """GEPA's own directory for fast round ``rnd`` (holds pickles: never read by the loaders)."""
        return self.path / FAST / f"round_{rnd:04d}"

    def plasticity_dir(self, label: str) -> Path:
        return self.path / "plasticity" / label

    def checkpoint_dir(self, name: str) -> Path:
        return self.path / CHECKPOINTS / name

    def exists(self) -> bool:
        """True once the run is created (``config.yaml`` marks a run directory; it is written last)."""
        return self.config_file.exists()

    def create(self, config_yaml: str, write_first: Callable[[], None]) -> None:
        """Make the layout, run ``write_first`` (harnesses, first events, state), then write config.yaml.

        config.yaml is written last: a crash while the run is being created leaves a directory that the
        same call simply initialises again, never one that can neither be resumed (no state.json) nor
        re-created (config.yaml exists).
        """
        for sub in SUBDIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        write_first()
        atomic_write_text(self.config_file, config_yaml)

    # ------------------------------------------------------------------ state
    def save_state(self, core: dict, checkpoint: str | None) -> None:
        """Write state.json: ``core`` (counters, population, scores, seed harness) and the checkpoint.

        ``at_checkpoint`` is the newest core whose RL step is the checkpoint's, i.e. the one matching the
        weights on disk (fast rounds and stage switches after that step included). With
        ``checkpoint_every > 1`` a run that ends between checkpoints resumes from it.
        """
        ck_step = int(checkpoint.rsplit("_", 1)[1]) if checkpoint else 0
        if core["counters"]["rl_step"] == ck_step or self._at_checkpoint is None:
            self._at_checkpoint = core
        atomic_write_json(self.path / STATE, {**core, "checkpoint": checkpoint, "at_checkpoint": self._at_checkpoint,
                                              "updated": now()})

    def read_state(self) -> dict | None:
        return read_json(self.path / STATE, None)

    def load_state(self) -> dict:
        """The state to resume from: state.json, rolled back to ``at_checkpoint`` when the weights on disk
        are older than its counters (``rolled_back_steps`` says by how many RL steps)."""
        state = self.read_state()
        if state is None:
            raise RunDirError(f"{self.path}: no {STATE}; the run never completed its first write")
        at_ck = state.get("at_checkpoint")
        if at_ck and at_ck["counters"]["rl_step"] < state["counters"]["rl_step"]:
            lost = state["counters"]["rl_step"] - at_ck["counters"]["rl_step"]
            log.warning("%s: the last checkpoint (%s) is %d RL step(s) behind the run's counters; resuming "
                        "from the checkpoint and redoing them", self.path, state.get("checkpoint"), lost)
            state = {**state, **at_ck, "rolled_back_steps": lost}
        self._at_checkpoint = {k: state[k] for k in ("counters", "population", "population_scores", "seed_harness")
                               if k in state}
        return state

    # ------------------------------------------------------------------ records
    def append_metric(self, rec: dict) -> None:
        append_jsonl(self.path / METRICS, rec)

    def append_event(self, rec: dict) -> None:
        append_jsonl(self.path / EVENTS, rec)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl as written (normalize with :func:`fst_lab.records.normalize_all`)."""
        return read_jsonl(self.path / METRICS)

    def drop_metrics_after(self, counters: dict) -> list[dict]:
        """Drop records of steps the state doesn't count (slow/eval past ``rl_step``, fast past ``fast_round``,
        consolidate past ``consolidate_step``): written just before a crash, the resume redoes them.
        Returns the records kept."""
        def counted(r: dict) -> bool:
            kind = r.get("kind")
            if kind in ("slow", "eval"):
                return r.get("rl_step", 0) <= counters["rl_step"]
            if kind == "fast":
                return r.get("round", 0) <= counters["fast_round"]
            if kind == "consolidate":
                return r.get("consolidate_step", 0) <= counters.get("consolidate_step", 0)
            return True

        recs = self.read_metrics()
        keep = [r for r in recs if counted(r)]
        if len(keep) != len(recs):
            atomic_write_text(self.path / METRICS, "".join(json.dumps(r, default=json_default) + "\n" for r in keep))
        return keep

    # ------------------------------------------------------------------ harnesses
    def store_harness(self, h: Harness) -> None:
        """Add ``h`` to the lineage store harnesses/all/<id>.yaml (ids are content hashes: write once)."""
        p = self.path / HARNESSES_ALL / f"{h.id}.yaml"
        if not p.exists():
            h.save(p)

    def load_harnesses(self) -> dict[str, Harness]:
        out = {}
        for p in sorted((self.path / HARNESSES_ALL).glob("*.yaml")):
            h = Harness.load(p)
            out[h.id] = h
        return out

    def write_current(self, population: Sequence[Harness]) -> None:
        """harnesses/current/<i>_<name>.yaml = the live population (the files people edit by hand)."""
        cur = self.current_dir
        cur.mkdir(parents=True, exist_ok=True)
        wanted = {}
        for i, h in enumerate(population):
            fname = f"{i}_{h.name}.yaml"
            wanted[fname] = h.id
            atomic_write_text(cur / fname, h.dumps())
        for p in cur.glob("*.yaml"):
            if p.name not in wanted:
                p.unlink()
        self._current = wanted

    def hand_edits(self) -> list[tuple[str, str, Harness | HarnessError]]:
        """Files of harnesses/current/ changed by hand since :meth:`write_current`:
        ``(file name, id of the harness written there, the edited Harness or why it is invalid)``."""
        out: list[tuple[str, str, Harness | HarnessError]] = []
        for fname, hid in self._current.items():
            p = self.current_dir / fname
            if not p.exists():
                continue
            try:
                h = Harness.load(p)
            except HarnessError as e:
                out.append((fname, hid, e))
                continue
            if h.content_id() != hid:
                out.append((fname, hid, h))
        return out

    # ------------------------------------------------------------------ snapshots, rollouts
    def write_population(self, counters: dict, population: Sequence[Harness], scores: dict[str, float]) -> None:
        """populations/cycle_<n>.yaml: the population at the end of a cycle (ids, lineage, scores; a member
        not evaluated yet has score null)."""
        c = counters
        rec = {"cycle": c["cycle"], "rl_step": c["rl_step"], "fast_round": c["fast_round"], "stage": c["stage"],
               "members": [{"id": h.id, "name": h.name, "origin": h.lineage.origin, "round": h.lineage.round,
                            "parents": list(h.lineage.parents), "score": scores.get(h.id)} for h in population],
               "scores": dict(scores)}
        atomic_write_text(self.path / POPULATIONS / f"cycle_{c['cycle']:04d}.yaml",
                          yaml.safe_dump(rec, sort_keys=False))

    def write_rollouts(self, name: str, rows: Iterable[dict]) -> None:
        lines = [json.dumps(d, default=str, ensure_ascii=False) + "\n" for d in rows]
        (self.path / ROLLOUTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / ROLLOUTS / f"{name}.jsonl", "".join(lines))

    # ------------------------------------------------------------------ checkpoints
    def write_checkpoint(self, name: str, save: Callable[[Path], None]) -> Path:
        """``save(tmp_dir)`` writes the checkpoint into a temp dir; it is renamed to ``name`` when done."""
        final = self.checkpoint_dir(name)
        tmp = self.checkpoint_dir(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def remove_checkpoint(self, name: str) -> None:
        shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)

    # ------------------------------------------------------------------ stop file
    def request_stop(self) -> None:
        """Ask the run to stop at its next step boundary (any process: the app, a shell, the session)."""
        atomic_write_text(self.path / STOP, "")

    def stop_requested(self) -> bool:
        return (self.path / STOP).exists()

    def clear_stop(self) -> None:
        (self.path / STOP).unlink(missing_ok=True)
