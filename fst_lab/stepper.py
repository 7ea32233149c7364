"""Run a Hugging Face ``Trainer``'s ``train()`` one optimizer step at a time.

``trainer.train()`` is one long call that owns the training loop. To interleave optimizer steps with
other work (a GEPA round, an evaluation, a notebook cell), :class:`TrainerStepper` runs ``train()``
once, in a worker thread, for an unbounded number of steps, and parks that thread at the start of
every optimizer step until :meth:`TrainerStepper.step` grants the next one. The optimizer, scheduler,
``global_step``, dataloader position and RNG streams stay the trainer's own; nothing of its loop is
re-implemented, and no private attribute of the trainer is touched.

    >>> stepper = TrainerStepper(trainer)   # adds a callback; give the trainer a huge max_steps
    >>> stepper.start()                     # train() begins and parks before step 1
    >>> logs = stepper.step()               # one optimizer step -> the dict the trainer logged for it
    >>> stepper.close()

Nothing here knows what is being trained. Between steps the worker is parked, so the caller may read
or change anything the trainer reads at the next step (one caller at a time).

**CPU threads.** With OpenMP (torch's CPU runtime) every OS thread that runs parallel work keeps its own
pool of worker threads. Two live pools (the caller's and the worker's) exceed the cores of a small machine,
and libgomp then stops spinning between parallel regions: each small op pays a thread wake-up, which made
the decoding steps of rollouts ~1.5x slower (an 8x576 . 576x1536 product: 85 -> 150 us, 2 threads).
So whichever side hands over releases its own pool first (:func:`release_openmp_pool`); only the side
that computes has one.

**Ctrl-C.** A ``KeyboardInterrupt`` in the caller while :meth:`~TrainerStepper.step` waits asks the
worker to stop at the next *restartable* point. Code the trainer calls back into (e.g. a rollout
function) marks its restartable part with :meth:`~TrainerStepper.restartable` and calls
:meth:`~TrainerStepper.check` inside it: if the interrupt lands there, that part is abandoned with no
change to weights, optimizer or counters, the worker parks, and the next ``step()`` runs it again
from its start. A step already past it (loss, backward, optimizer) completes first. Either way
``step()`` then raises :class:`StepInterrupted` (a ``KeyboardInterrupt``) saying whether the step
completed, and the trainer is parked: save, step again or close. A second Ctrl-C while it winds down
leaves the step running in the background; the next call waits for it.
"""

from __future__ import annotations

import ctypes
import functools
import queue
import re
import sys
import threading
from typing import Any, Callable


class StepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a step. ``completed``: the step finished (its ``logs`` are attached) rather than
    being abandoned at a restartable point. Callers above may attach what they completed (``records``)."""

    def __init__(self, completed: bool, logs: dict | None = None):
        super().__init__("step interrupted" + (" after it completed" if completed else "; nothing changed"))
        self.completed = completed
        self.logs = logs
        self.records: list = []


class _Abandon(BaseException):
    """Raised in the worker to abandon a restartable section (BaseException: no ``except Exception`` eats it)."""


class _Stopped(BaseException):
    """Raised in the worker to unwind ``train()`` when the stepper is closed."""


_STOP = object()


@functools.lru_cache(maxsize=1)
def _openmp_pause() -> Callable[[int], int] | None:
    """``omp_pause_resource_all`` of the OpenMP runtime loaded in this process (the one torch uses), or None."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = [ln.split()[-1] for ln in f if re.search(r"/lib(gomp|iomp5|omp)[^/]*\.so", ln)]
    except OSError:  # no /proc (macOS, Windows): nothing to release
        return None
    for path in dict.fromkeys(paths):
        try:
            return ctypes.CDLL(path).omp_pause_resource_all  # dlopen of a loaded library: the same runtime
        except (OSError, AttributeError):
            continue
    return None


def release_openmp_pool() -> bool:
    """Release the calling thread's OpenMP worker threads (``omp_pause_resource_all(omp_pause_soft)``); the
    next parallel region starts them again. True if released. Call it only outside parallel work, e.g. before
    a thread blocks while another one computes. No-op before torch is imported or without such a runtime."""
    if "torch" not in sys.modules:
        return False
    pause = _openmp_pause()
    return pause is not None and pause(1) == 0  # 1 = omp_pause_soft


def _gate_callback(stepper: "TrainerStepper"):
    from transformers import TrainerCallback

    class _Gate(TrainerCallback):
        """Parks the worker before each optimizer step; keeps the step's logged values."""

        def on_step_begin(self, args, state, control, **kwargs):
            stepper._park()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # per-step training logs (not train()'s final summary)
                stepper._logs = dict(logs)

    return _Gate()


class TrainerStepper:
    """Owns the worker thread that runs ``trainer.train()``, gated one optimizer step per :meth:`step`."""

    def __init__(self, trainer):
        self.trainer = trainer
        self._permits: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._idle = threading.Event()  # set while the worker is parked (or gone)
        self._interrupt = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._logs: dict | None = None
        self._closed = False
        trainer.add_callback(_gate_callback(self))

    # ------------------------------------------------------------------ caller side
    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, resume: str | None = None) -> None:
        """Start ``train()`` (optionally ``resume_from_checkpoint``) and wait until it parks before its
        first step (optimizer and scheduler exist then). No-op if already started."""
        if self._closed:
            raise RuntimeError("the trainer is not running (closed)")
        if self._thread is not None:
            self.wait()
            return
        self._idle.clear()
        self._thread = threading.Thread(target=self._run, args=(resume,), daemon=True, name="fst-trainer-step")
        self._thread.start()
        self.wait()

    def step(self) -> dict:
        """One optimizer step; returns the values the trainer logged for it (``loss``, its metrics...)."""
        self.start()
        before = int(self.trainer.state.global_step)
        self._logs = None
        self._interrupt.clear()
        self._idle.clear()
        release_openmp_pool()  # the worker computes now; see "CPU threads" above
        self._permits.put(1)
        try:
            self.wait()
        except KeyboardInterrupt:
            self._interrupt.set()
            self.wait()  # the worker parks at a restartable point, or after finishing the step
            completed = int(self.trainer.state.global_step) > before
            raise StepInterrupted(completed, self._logs if completed else None) from None
        if int(self.trainer.state.global_step) != before + 1:  # pragma: no cover - defensive
            raise RuntimeError("the trainer parked without completing the granted step")
        return dict(self._logs or {})

    def wait(self) -> None:
        """Block until the worker is parked; re-raise (wrapped) if it died."""
        while not self._idle.wait(timeout=0.2):
            if self._thread is None or not self._thread.is_alive():
                break
        if self._error is not None:
            raise RuntimeError(f"the trainer failed: {type(self._error).__name__}: {self._error}. It can't "
                               "continue; build a new one (a checkpoint resumes it).") from self._error
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the trainer is not running (closed?)")

    def close(self) -> None:
        """End the worker (``train()`` unwinds); the stepper can't step afterwards. Idempotent."""
        self._closed = True
        t = self._thread
        if t is not None and t.is_alive():
            try:
                self.wait()
            except RuntimeError:
                pass
            self._idle.clear()
            self._permits.put(_STOP)
            t.join(timeout=60)
        self._thread = None

    # ------------------------------------------------------------------ worker side
    def restartable(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` in the worker; if an interrupt abandons it (:meth:`check`), park, and run it again
        from the start when the next step is granted. ``fn`` must not change the trainer's state."""
        while True:
            try:
                return fn(*args, **kwargs)
            except _Abandon:
                self._park()

    def check(self) -> None:
        """Inside a restartable section: abandon it now if the caller was interrupted."""
        if self._interrupt.is_set() and threading.current_thread() is self._thread:
            raise _Abandon()

    def _park(self) -> None:
        release_openmp_pool()  # the caller computes now
        self._idle.set()
        if self._permits.get() is _STOP:
            raise _Stopped()

    def _run(self, resume: str | None) -> None:
        try:
            self.trainer.train(resume_from_checkpoint=resume)
            self._error = RuntimeError("the trainer finished its (unbounded) schedule")
        except _Stopped:
            pass
        except BaseException as e:  # surfaced to the caller by wait()
            self._error = e
        finally:
            self._idle.set()
