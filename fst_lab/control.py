"""Control: what a session is doing right now (busy, activity, progress), pause and stop.

Every face shows the same truth because it comes from here, whoever started the work (a notebook
cell, a dashboard button, the app, the CLI): a public step marks itself with :meth:`Control.working`
for its whole duration; ``busy``/``activity`` can be read from any thread while it runs.

    >>> with control.working("slow step 1/4") as act:    # busy is True, activity "slow step 1/4"
    ...     act[0] = "slow step 2/4"                       # update the label as the step goes on
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

from fst_lab import records
from fst_lab.rundir import RunDir

log = logging.getLogger(__name__)


class Control:
    """Busy/activity, pause, stop and listeners of one session (thread-safe; the stop file is the run
    directory's)."""

    def __init__(self, rundir: RunDir):
        self.rundir = rundir
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._activity: list[list[str]] = []  # one [label] per step in progress (nested: innermost last)
        self._alock = threading.Lock()
        self.listeners: list[Callable[[dict], None]] = []  # called with every record and progress event

    def notify(self, rec: dict) -> None:
        """Hand ``rec`` to every listener; a broken UI callback is logged, never breaks the step."""
        for fn in list(self.listeners):
            try:
                fn(rec)
            except Exception as e:
                log.warning("listener failed: %s", e)

    @contextmanager
    def working(self, label: str, lock: threading.RLock | None = None) -> Iterator[list[str]]:
        """Mark a step as running for its whole duration (taking ``lock`` inside); yields ``[label]``,
        which the step may rewrite to say how far it is."""
        entry = [label]
        with self._alock:
            self._activity.append(entry)
        try:
            with lock if lock is not None else nullcontext():
                yield entry
        finally:
            with self._alock:
                self._activity[:] = [e for e in self._activity if e is not entry]

    @contextmanager
    def paced(self, n: int, name: str, phase: str, lock: threading.RLock | None = None,
              wrap: Callable[[Iterator[int]], Iterator[int]] = iter) -> Iterator[Iterator[int]]:
        """``n`` steps of one call, paced the same way for every step kind: the activity reads
        ``"<name> i/n"``, a pause holds between steps (a step called directly runs), a stop request ends
        the loop and a progress event announces each step. ``wrap`` may add a progress bar.

            >>> with control.paced(4, "slow step", "rl", lock) as steps:
            ...     for i in steps: ...
        """
        with self.working(f"{name} 0/{n}", lock) as act:
            def steps() -> Iterator[int]:
                for i in wrap(range(n)):
                    if i and self.paused:
                        act[0] = f"paused before {name} {i + 1}/{n}"
                        self.wait_unpaused()
                    if self.stop_requested():
                        return
                    act[0] = f"{name} {i + 1}/{n}"
                    self.notify(records.progress(phase, i, n))
                    yield i

            yield steps()

    def current(self) -> list[str]:
        """The innermost step's ``[label]`` (to rewrite it), or a detached one when no step runs."""
        with self._alock:
            return self._activity[-1] if self._activity else [""]

    @property
    def busy(self) -> bool:
        return bool(self._activity)

    @property
    def activity(self) -> str | None:
        with self._alock:
            return self._activity[-1][0] if self._activity else None

    # ------------------------------------------------------------------ pause / stop
    def pause(self) -> None:
        self._unpaused.clear()

    def unpause(self) -> None:
        self._unpaused.set()

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def wait_unpaused(self) -> None:
        self._unpaused.wait()

    def request_stop(self) -> None:
        self._stop.set()
        self._unpaused.set()  # a paused run wakes up to stop

    def clear_stop(self) -> None:
        """Forget a stop request: this process's and the stop file."""
        self._stop.clear()
        self.rundir.clear_stop()

    def forget_stop(self) -> None:
        """Forget this process's stop request (a stop file, if any, still stops the next step)."""
        self._stop.clear()

    def stop_requested(self) -> bool:
        """A stop asked in this process or by the stop file (the app, a shell, another process)."""
        if self.rundir.stop_requested():
            self._stop.set()
        return self._stop.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


def gepa_progress(notify: Callable[[dict], None], rescore_n: int, budget: int) -> Callable[[dict], None]:
    """``fast_step(on_event=...)`` -> progress events: ``rollouts`` while the population is re-scored,
    then ``gepa`` i/n over GEPA's metric-call budget with proposals accepted/rejected so far."""
    st = {"i": 0, "n": budget, "accepted": 0, "rejected": 0}
    notify(records.progress("rollouts", 0, rescore_n, what="re-scoring the population"))

    def on_event(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "rescored":
            notify(records.progress("rollouts", rescore_n, rescore_n, what="re-scoring the population"))
        elif kind == "budget":
            st["i"] = ev.get("used") or 0
            if ev.get("remaining") is not None:
                st["n"] = st["i"] + ev["remaining"]
        elif kind in ("accepted", "rejected"):
            st[kind] += 1
        elif kind == "done":
            st["i"] = st["n"]
        notify(records.progress("gepa", st["i"], st["n"], what=kind, accepted=st["accepted"],
                                rejected=st["rejected"]))
    return on_event


def progress_bar(enabled: bool, iterable=None, **kw):
    """A tqdm bar; with ``enabled=False`` the plain iterable (or None without one)."""
    if not enabled:
        if iterable is None:
            return None
        kw["disable"] = True
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw) if iterable is not None else tqdm(**kw)
