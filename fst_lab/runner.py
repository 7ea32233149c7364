"""One background runner for a Session, shared by the notebook dashboard and the Gradio app.

Both faces start work the same way (a step on a worker thread, so the notebook or the browser stays
responsive), pause and stop it the same way, and show the same state: the *session's* own
``busy`` / ``activity`` / ``paused`` (see :mod:`fst_lab.control`), so work started by a notebook cell
or by another face shows up too, plus the latest progress event of the step that is running
(``{"event": "progress", "phase": "rollouts"|"gepa"|"rl"|"eval"|"consolidate", "i", "n", ...}``,
delivered through ``session.listeners``).

    >>> runner = Runner(session)
    >>> runner.start("slow step", lambda s: s.slow_step(4))     # False (with runner.message) when busy
    >>> runner.state()["progress"]                               # 'RL step 2/4 · reward 0.500'
    >>> runner.pause(); runner.resume(); runner.stop()           # stop = the session's stop request
    >>> runner.wait()                                            # join the worker (tests, notebooks)

No widgets or Gradio here: a face subscribes with ``runner.subscribe(fn)`` and is called (on
whichever thread produced it) with every record, progress event and start/end of work.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from fst_lab import records

log = logging.getLogger(__name__)

PHASE_NAMES = {"rollouts": "rollouts", "gepa": "GEPA metric calls", "rl": "RL step", "eval": "evaluation rollouts",
               "consolidate": "consolidation step"}


def describe_progress(ev: Mapping[str, Any] | None) -> str:
    """One line for a progress event: ``GEPA metric calls 4/10 · 1 proposal accepted, 2 rejected``."""
    if not ev:
        return ""
    phase = ev.get("phase", "")
    text = f"{PHASE_NAMES.get(phase, phase)} {ev.get('i', 0)}/{ev.get('n', '?')}"
    extra = []
    if phase == "gepa" and ("accepted" in ev or "rejected" in ev):
        a, r = int(ev.get("accepted") or 0), int(ev.get("rejected") or 0)
        extra.append(f"{a} proposal{'s' if a != 1 else ''} accepted, {r} rejected")
    if isinstance(ev.get("reward"), (int, float)):
        extra.append(f"reward {ev['reward']:.3f}")
    if ev.get("what") and phase == "rollouts":
        extra.append(str(ev["what"]))
    return " · ".join([text, *extra])


class Runner:
    """Runs one piece of work at a time for a session on a daemon thread, and reports its state.

    ``state()`` is the truth both faces show: ``busy`` is the session's (so a step a notebook cell
    runs counts), or this runner's worker while it is starting up; ``activity`` the session's label;
    ``progress`` the latest progress event of the step in flight, as a line of text; ``error`` the
    last failure of work started here (shown, never raised into the UI thread).
    """

    def __init__(self, session=None, *, name: str = "fst-runner"):
        self.name = name
        self.session = None
        self.message = ""  # why the last start() was refused
        self.last_error: str | None = None
        self.last_traceback: str | None = None
        self.label: str | None = None  # what this runner's worker was asked to do
        self.progress: dict | None = None  # latest progress event (any phase)
        self.changes = 0  # bumped on every record/progress event/start/end (cheap "did anything happen")
        self._worker: threading.Thread | None = None
        self._subscribers: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()
        if session is not None:
            self.attach(session)

    # ------------------------------------------------------------------ session
    def attach(self, session) -> None:
        """Follow ``session`` (detaching from the previous one)."""
        self.detach()
        self.session = session
        self.progress = None
        session.listeners.append(self._on_record)

    def detach(self) -> None:
        if self.session is not None:
            try:
                self.session.listeners.remove(self._on_record)
            except ValueError:
                pass
        self.session = None

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        """Call ``fn(rec)`` for every record, progress event and ``{"event": "runner", ...}`` change."""
        self._subscribers.append(fn)

    def _emit(self, rec: dict) -> None:
        self.changes += 1
        for fn in list(self._subscribers):
            try:
                fn(rec)
            except Exception as e:  # a broken view must not break training
                log.warning("runner subscriber failed: %s", e)

    def _on_record(self, rec: dict) -> None:
        if records.is_progress(rec):
            self.progress = dict(rec)
        self._emit(rec)

    # ------------------------------------------------------------------ state
    @property
    def working(self) -> bool:
        """This runner's worker thread is alive."""
        w = self._worker
        return w is not None and w.is_alive()

    @property
    def busy(self) -> bool:
        s = self.session
        return self.working or bool(s is not None and s.busy)

    @property
    def paused(self) -> bool:
        return bool(self.session is not None and self.session.paused)

    @property
    def activity(self) -> str | None:
        s = self.session
        act = s.activity if s is not None else None
        if act is None and self.working:
            act = self.label  # between two steps of this runner's work
        return act

    def progress_text(self) -> str:
        """The progress of the step in flight ('' when idle: a finished step's progress is history)."""
        return describe_progress(self.progress) if self.busy else ""

    def state(self) -> dict:
        """``{"session", "busy", "paused", "activity", "progress", "error", "stop_requested"}``."""
        s = self.session
        return {"session": s is not None, "busy": self.busy, "paused": self.paused, "activity": self.activity,
                "progress": self.progress_text(), "error": self.last_error,
                "stop_requested": bool(s is not None and s.control.stopped)}

    # ------------------------------------------------------------------ work
    def start(self, label: str, work: Callable[[Any], Any], *, on_done: Callable[[Any], None] | None = None) -> bool:
        """Run ``work(session)`` on the worker thread. False (reason in ``message``) when there is no
        session or it is busy — whoever made it busy. ``on_done(result)`` runs on the worker after
        success. A stop requested earlier is forgotten: starting work means "go on"."""
        with self._lock:
            if self.session is None:
                self.message = "no session: start one first"
                return False
            if self.busy:
                self.message = f"busy ({self.activity or 'working'}): wait for it, pause or stop it"
                return False
            session = self.session
            session.clear_stop()
            self.message = ""
            self.label = label
            self.last_error = self.last_traceback = None
            self.progress = None
            self._worker = threading.Thread(target=self._run, args=(session, label, work, on_done),
                                            name=self.name, daemon=True)
            self._worker.start()
        self._emit({"event": "runner", "state": "started", "label": label})
        return True

    def _run(self, session, label: str, work, on_done) -> None:
        t0 = time.time()
        try:
            result = work(session)
            if on_done is not None:
                on_done(result)
        except Exception as e:  # shown by the faces; the notebook / app keeps running
            self.last_error = f"{label} failed: {type(e).__name__}: {e}"
            self.last_traceback = traceback.format_exc(limit=-4)
            log.warning("%s\n%s", self.last_error, self.last_traceback)
        finally:
            if session.paused:
                session.resume_work()  # a pause ends with the work it paused
            self.progress = None
            self._emit({"event": "runner", "state": "finished", "label": label,
                        "seconds": round(time.time() - t0, 1), "error": self.last_error})

    def wait(self, timeout: float | None = None) -> bool:
        """Join the worker; True when nothing this runner started is still running."""
        w = self._worker
        if w is not None:
            w.join(timeout)
        return not self.working

    # ------------------------------------------------------------------ control
    def pause(self) -> str:
        if self.session is None:
            return "no session"
        self.session.pause()
        self._emit({"event": "runner", "state": "paused"})
        return "paused: the work waits at the next step boundary"

    def resume(self) -> str:
        if self.session is None:
            return "no session"
        self.session.resume_work()
        self._emit({"event": "runner", "state": "resumed"})
        return "resumed"

    def toggle_pause(self) -> str:
        return self.resume() if self.paused else self.pause()

    def stop(self) -> str:
        """Stop at the next step boundary (the step in flight finishes), whoever started the work."""
        if self.session is None:
            return "no session"
        self.session.request_stop()
        self._emit({"event": "runner", "state": "stop requested"})
        return "stop requested: the work ends at the next step boundary" if self.busy else "stopped"
