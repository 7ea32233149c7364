"""Crash-safety worker for tests/test_crash_safety.py: runs a tiny FST session that gets SIGKILLed.

It is a *fork server*: started once, it imports torch/transformers/TRL/GEPA/LiteLLM and fst_lab (tens of
seconds on a busy 2-core box), then forks one child per command read from stdin. Each child
creates or resumes the session in ``run_dir`` and runs ``cycles`` cycles; the parent test kills it
with SIGKILL after a random delay, or the child kills *itself* at an instrumented point:

    FST crash spec  "<module>[.<Class>].<function>:<when>:<n>"
        when = enter  SIGKILL on entering the n-th call (nothing of that call happened)
               exit   SIGKILL right after the n-th call returned (before its caller went on)
               torn   for append_jsonl-like functions: write half of the line, then SIGKILL

    $ python tests/scripts/crash_worker.py            # then, one JSON command per line on stdin:
    {"run_dir": "/tmp/r/crash", "config": {...}, "cycles": 2, "crash_at": "fst_lab.session.Session._checkpoint:enter:1"}

For every command the server prints ``{"event": "started", "pid": ...}`` and later ``{"event": "exited",
"pid": ..., "signal": 9 | null, "code": ...}``. The child appends its own progress (``resumed``,
``created``, ``done``) to ``<run_dir>.worker.jsonl`` so the test knows how far it got. Forking after
the imports (but before any torch compute in the server) keeps every kill cheap.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


def _preload() -> None:
    """Everything the child needs, imported once in the server (no torch computation here: a thread pool
    started before fork would not survive into the child)."""
    import gepa  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import GRPOConfig, GRPOTrainer  # noqa: F401

    import fst_lab.fast  # noqa: F401
    import fst_lab.models  # noqa: F401
    import fst_lab.rollout  # noqa: F401
    import fst_lab.session  # noqa: F401
    import fst_lab.slow  # noqa: F401
    from fst_lab.lm import _litellm
    from fst_lab.tasks import get_task

    _litellm()
    get_task("math", level=1, seed=0)  # warms the task registry and its generators
    _register_keyword_task()


def _register_keyword_task() -> None:
    """``crash-keyword``: reward grows with the number of BANANAs in the system prompt, so the fault
    server's ever longer BANANA replies are accepted by GEPA and the population keeps changing."""
    from fst_lab.tasks.base import Example, Score, register_task

    @register_task("crash-keyword")
    class KeywordTask:
        name = "crash-keyword"

        def __init__(self, level: int = 1, seed: int = 0, **_):
            self.level, self.seed = level, seed

        def examples(self, split, n=None):
            return [Example(id=f"{split}-{i}", inputs={"question": f"What is {i} + {i}?"}, answer=2 * i)
                    for i in range(n or 8)]

        def score(self, example, traj):
            msgs = traj.messages
            system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
            n = system.count("BANANA")
            return Score(min(1.0, n / 1000.0), f"{n} BANANA(s) in the instructions; more is better.")

        def tool_impls(self):
            return {}


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (no orphaned workers if the test is interrupted)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------- instrumented kill points
def _resolve(dotted: str):
    """'pkg.mod.Class.method' or 'pkg.mod.func' -> (owner object, attribute name)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ValueError(f"cannot resolve {dotted!r}")


def _die(note: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"[crash_worker] SIGKILL at {note}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def install_crash_point(spec: str) -> None:
    target, when, n = spec.rsplit(":", 2)
    n = int(n)
    owner, attr = _resolve(target)
    original = getattr(owner, attr)
    is_static = isinstance(owner, type) and isinstance(owner.__dict__.get(attr), staticmethod)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return original(*args, **kwargs)
        if when == "enter":
            _die(f"enter {target} #{n}")
        if when == "torn":
            # append_jsonl(path, obj): half of the line reaches the disk, then the process dies
            path, obj = args[0], args[1]
            line = json.dumps(obj, default=str) + "\n"
            with open(path, "a", encoding="utf-8") as f:
                f.write(line[: max(1, len(line) // 2)])
                f.flush()
                os.fsync(f.fileno())
            _die(f"torn {target} #{n}")
        try:
            return original(*args, **kwargs)
        finally:  # "exit" also after the call raised (e.g. a failed reflection)
            if when == "exit":
                _die(f"exit {target} #{n}")

    wrapper.__wrapped__ = original
    setattr(owner, attr, staticmethod(wrapper) if is_static else wrapper)


# ---------------------------------------------------------------------------- the child
def _note(run_dir: str, **rec) -> None:
    with open(f"{run_dir}.worker.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"pid": os.getpid(), "t": time.time(), **rec}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def child(cmd: dict) -> int:
    import torch

    torch.set_num_threads(1)
    if cmd.get("crash_at"):
        install_crash_point(cmd["crash_at"])
    from pathlib import Path

    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    run_dir = Path(cmd["run_dir"])
    policy = tiny_policy(seed=0)
    if (run_dir / "config.yaml").exists():
        s = Session.resume(run_dir, policy=policy, progress=False)
        _note(str(run_dir), event="resumed", counters=dict(s.counters))
    else:
        cfg = FSTConfig.from_dict({**cmd["config"], "runs_root": str(run_dir.parent), "run_name": run_dir.name})
        s = Session(cfg, run_dir, policy=policy, progress=False)
        _note(str(run_dir), event="created", counters=dict(s.counters))
    st = s.run(cycles=int(cmd.get("cycles", 1)))
    _note(str(run_dir), event="done", counters=dict(s.counters), status={k: st[k] for k in ("cycle", "rl_step")})
    s.weights.close()
    return 0


def serve() -> None:
    _die_with_parent()
    _preload()
    print(json.dumps({"event": "ready", "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        log_path = f"{cmd['run_dir']}.log"
        pid = os.fork()
        if pid == 0:  # the child: its own log, its own process group, never returns into the loop
            code = 1
            try:
                _die_with_parent()
                os.setpgid(0, 0)
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = child(cmd)
            except BaseException:
                traceback.print_exc()
                code = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"event": "started", "pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        print(json.dumps({"event": "exited", "pid": pid, "signal": sig, "code": code}), flush=True)
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"event": "bye", "cpu_server": me.ru_utime + me.ru_stime,
                      "cpu_children": kids.ru_utime + kids.ru_stime}), flush=True)


if __name__ == "__main__":
    serve()
