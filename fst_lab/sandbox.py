"""Run untrusted, model-written Python in a subprocess with time, memory and I/O limits.

Tasks use it to compute ground truth (CodeIO executes every generated program once) and tools use it
to run code a model wrote. It never raises for bad code: every outcome, including a timeout or a
blocked operation, comes back as a :class:`SandboxResult`.

    >>> r = run_python("print(sum(range(10)))")
    >>> r.ok, r.stdout
    (True, '45\\n')
    >>> run_python("while True: pass", timeout=0.5).timed_out
    True

Layers of containment (each one catches what the others might miss):

- a fresh ``python -I -S -B`` child (isolated mode, no site-packages, no .pyc writes) in its own
  process group, working in a throwaway temp directory that is deleted afterwards; a wall-clock
  timeout kills the whole group, and stdout/stderr are capped while they are read;
- a minimal environment: nothing is inherited from the parent, so API keys and proxies stay out;
- resource limits set by the child on itself before any user code runs (address space, CPU seconds,
  file size, open files, processes, no core dumps). They are set in the child rather than through
  ``preexec_fn`` because ``preexec_fn`` can deadlock when the parent has threads, and a training
  process always has (torch's thread pool);
- a new network namespace when the kernel lets us create one (root, or CAP_SYS_ADMIN) so there is no
  network device at all, plus socket functions replaced by ones that raise ``PermissionError``;
- an audit hook (PEP 578) that refuses sockets, subprocesses, ``fork``/``exec``/``spawn``/``kill``,
  ``ctypes``, writes outside the working directory, and reads outside it except the standard library.
  ``RLIMIT_NPROC`` counts every process of the user and is ignored for root, so the hook is what
  stops a fork bomb there.

Threat model: this contains the mistakes and stray side effects of model-written code (infinite loops,
memory blow-ups, ``rm -rf``, network calls, reading secrets). It is not a boundary against a
determined attacker with native-code exploits; run the whole lab in a container for that.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

OUTPUT_LIMIT = 64 * 1024  # bytes kept per stream; more output than this stops the program

# Runs in the child before the user's code. argv: [-c, program_path, root, limits_json].
_PRELUDE = r'''
import sys, os
_prog, _root, _limits = sys.argv[1], sys.argv[2], __import__("json").loads(sys.argv[3])
with open(_prog, encoding="utf-8") as _f:
    _src = _f.read()

import resource as _resource
def _limit(kind, value):
    try:
        _soft, _hard = _resource.getrlimit(kind)
        if _hard != _resource.RLIM_INFINITY:
            value = min(value, _hard)
        _resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
_limit(_resource.RLIMIT_AS, _limits["memory"])
_limit(_resource.RLIMIT_CPU, _limits["cpu"])
_limit(_resource.RLIMIT_FSIZE, _limits["fsize"])
_limit(_resource.RLIMIT_NOFILE, 64)
_limit(_resource.RLIMIT_NPROC, _limits["nproc"])
_limit(_resource.RLIMIT_CORE, 0)

# No network device at all when we may create a network namespace (needs CAP_SYS_ADMIN).
if _limits["netns"]:
    try:
        import ctypes as _ct
        _ct.CDLL(None, use_errno=True).unshare(0x40000000)  # CLONE_NEWNET
        del _ct
    except Exception:
        pass

import socket as _socket
def _no_network(*a, **k):
    raise PermissionError("network access is disabled in the sandbox")
class _NoSocket:
    def __new__(cls, *a, **k):
        _no_network()
for _n in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
           "gethostbyaddr", "socketpair", "fromfd"):
    if hasattr(_socket, _n):
        setattr(_socket, _n, _no_network)
_socket.socket = _socket.SocketType = _NoSocket

_root = os.path.realpath(_root)
# mkfifo/mknod raise no audit event, so the hook below can't see them: only allow them inside the root.
def _guard_special(_fn):
    def _guarded(path, *a, **k):
        _p = os.path.realpath(os.path.join(os.getcwd(), os.fspath(path)))
        if _p != _root and not _p.startswith(_root + os.sep):
            raise PermissionError(f"sandbox: creating {path!r} outside the working directory is not allowed")
        if _fn.__name__ == "mknod":
            raise PermissionError("sandbox: device nodes are not allowed")
        return _fn(path, *a, **k)
    return _guarded
import posix as _posix
for _n in ("mkfifo", "mknod"):
    if hasattr(os, _n):
        _g = _guard_special(getattr(os, _n))
        setattr(os, _n, _g)
        setattr(_posix, _n, _g)
_read_ok = tuple(sorted({os.path.realpath(p) for p in sys.path if p} | {"/usr/share/zoneinfo"}))
# Modules that only exist to start processes or call native code: refuse the import itself.
_BLOCKED_MODULES = ("_posixsubprocess", "ctypes", "_ctypes", "subprocess", "multiprocessing",
                    "_multiprocessing", "pty")
for _m in _BLOCKED_MODULES:
    sys.modules.pop(_m, None)
_BLOCKED_EVENTS = ("socket.", "ctypes.", "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.exec",
                   "os.posix_spawn", "os.spawn", "os.kill", "os.killpg", "os.startfile", "pty.spawn",
                   "signal.pthread_kill", "gc.get_objects", "gc.get_referrers", "gc.get_referents")
# Events whose first n arguments are paths that must stay inside the working directory.
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2,
                "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.mkdir": 1, "os.utime": 1,
                "os.setxattr": 1, "os.removexattr": 1, "os.chflags": 1, "shutil.rmtree": 1,
                "shutil.copyfile": 2, "shutil.copytree": 2, "shutil.move": 2, "shutil.chown": 1,
                "shutil.make_archive": 1, "shutil.unpack_archive": 2}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _make_hook(root, read_ok, dev_ok, blocked_modules, blocked_events, path_events, write_flags, real,
               fsdecode, PermissionError=PermissionError, isinstance=isinstance, any=any, str=str, bytes=bytes,
               PathLike=os.PathLike):
    # Everything the hook needs is bound here, in its closure, so user code can't rebind a global.
    def inside(path, roots):
        if isinstance(path, int) or path is None:
            return True  # an already-open file descriptor
        try:
            p = real(fsdecode(path))
        except Exception:
            return False
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    def hook(event, args):
        if event.startswith(blocked_events):
            raise PermissionError(f"sandbox: '{event}' is not allowed")
        if event == "import":
            if args[0].split(".")[0] in blocked_modules:
                raise PermissionError(f"sandbox: importing '{args[0]}' is not allowed")
        elif event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writes:
                if not inside(path, (root,)) and path != "/dev/null":
                    raise PermissionError(f"sandbox: writing '{path}' outside the working directory is not allowed")
            elif not inside(path, (root,) + read_ok) and path not in dev_ok:
                raise PermissionError(f"sandbox: reading '{path}' outside the working directory is not allowed")
        elif event in ("os.listdir", "os.scandir"):
            if args and not inside(args[0] if args[0] is not None else ".", (root,) + read_ok):
                raise PermissionError(f"sandbox: listing '{args[0]}' is not allowed")
        elif event in path_events:
            for p in args[:path_events[event]]:
                if isinstance(p, (str, bytes, PathLike)) and not inside(p, (root,)):
                    raise PermissionError(f"sandbox: '{event}' on '{p}' outside the working directory is not allowed")
        elif event == "os.chdir":
            if not inside(args[0], (root,)):
                raise PermissionError("sandbox: leaving the working directory is not allowed")
        elif event == "object.__setattr__" and args[0] is hook:
            raise PermissionError("sandbox: the audit hook can't be modified")
    return hook

os.chdir(_root)
sys.path[:] = [p for p in sys.path if p]
sys.argv = ["<sandbox>"]
sys.addaudithook(_make_hook(_root, _read_ok, ("/dev/null", "/dev/urandom", "/dev/zero"), frozenset(_BLOCKED_MODULES),
                            _BLOCKED_EVENTS, dict(_PATH_EVENTS), _WRITE_FLAGS, os.path.realpath, os.fsdecode))
del _f, _limit, _n, _m, _make_hook

_g = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(_src, "<sandbox>", "exec"), _g)
except SystemExit:
    raise
except BaseException as _e:
    import traceback as _tb
    _t = _e.__traceback__
    while _t is not None and _t.tb_frame.f_code.co_filename != "<sandbox>":
        _t = _t.tb_next
    sys.stdout.flush()
    _tb.print_exception(type(_e), _e, _t, file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)
'''


@dataclass
class SandboxResult:
    """What a sandboxed run produced. ``error`` is a one-line reason when it did not succeed."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool = False
    error: str | None = None
    seconds: float = 0.0
    output_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0


def _can_unshare_net() -> bool:
    """A network namespace needs CAP_SYS_ADMIN; without it the prelude's socket stubs remain."""
    return sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0


def _child_env(workdir: str) -> dict[str, str]:
    # Built from scratch: nothing (API keys, proxies, tokens) leaks from the parent's environment.
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


def run_python(code: str, *, timeout: float = 2.0, memory_mb: int = 256, stdin: str = "",
               output_limit: int = OUTPUT_LIMIT, files: dict[str, str] | None = None) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter and return what happened (never raises).

    ``timeout`` is wall-clock seconds (CPU time is capped at about the same); ``memory_mb`` caps the
    address space; ``files`` are written into the working directory first (name -> text).
    """
    t0 = time.time()
    base = tempfile.mkdtemp(prefix="fst_sandbox_")
    try:
        root = os.path.join(base, "work")
        os.mkdir(root, 0o700)
        for name, text in (files or {}).items():
            dest = os.path.realpath(os.path.join(root, name))
            if not dest.startswith(root + os.sep):
                return SandboxResult("", "", None, error=f"file name '{name}' escapes the working directory")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w", encoding="utf-8") as f:
                f.write(text)
        prog = os.path.join(base, "program.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(code)
        limits = {"memory": int(memory_mb) * 1024 * 1024, "cpu": int(max(1, timeout + 1)),
                  "fsize": 8 * 1024 * 1024, "nproc": 64, "netns": _can_unshare_net()}
        cmd = [sys.executable, "-I", "-S", "-B", "-c", _PRELUDE, prog, root, json.dumps(limits)]
        try:
            proc = subprocess.Popen(cmd, cwd=root, env=_child_env(root), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                    start_new_session=True)
        except OSError as e:
            return SandboxResult("", "", None, error=f"could not start the sandbox: {e}", seconds=time.time() - t0)
        out, err, timed_out, truncated = _communicate(proc, stdin.encode("utf-8"), timeout, output_limit)
        stdout = out.decode("utf-8", errors="replace")
        stderr = err.decode("utf-8", errors="replace")
        rc = proc.returncode
        return SandboxResult(stdout, stderr, rc, timed_out=timed_out,
                             error=_describe(rc, stderr, timed_out, truncated, timeout, output_limit),
                             seconds=time.time() - t0, output_truncated=truncated)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _communicate(proc: subprocess.Popen, data: bytes, timeout: float, limit: int) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin and read both pipes with a deadline and a size cap; kill the group on either."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    if data:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    timed_out = truncated = False
    view = memoryview(data)
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), view[:65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the program stopped reading: drop the rest
                        n = len(view)
                    view = view[n:]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                if len(buf) > limit:
                    del buf[limit:]
                    truncated = True
            if truncated:
                break
    finally:
        sel.close()
    _kill_group(proc)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered?
        proc.kill()
        proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except (OSError, ValueError):
            pass
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out, truncated


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads its own session), even after a clean exit."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(rc: int | None, stderr: str, timed_out: bool, truncated: bool, timeout: float,
              limit: int) -> str | None:
    if timed_out:
        return f"timed out after {timeout:g}s"
    if truncated:
        return f"output exceeded {limit} bytes; the program was stopped"
    if rc == 0:
        return None
    if rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed; memory or time limit)",
                "SIGXFSZ": " (file size limit)", "SIGSEGV": " (crashed)"}.get(name, "")
        return f"killed by {name}{hint}"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exited with status {rc}"


# ---------------------------------------------------------------------------- many snippets at once
_BATCH_DRIVER = r'''
import io, json, signal, sys, contextlib
_SNIPPETS = json.loads(%r)
_TIMEOUT = %r
class _SnippetTimeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _SnippetTimeout()
signal.signal(signal.SIGALRM, _alarm)
_results = []
for _src in _SNIPPETS:
    _buf = io.StringIO()
    _err = None
    try:
        with contextlib.redirect_stdout(_buf):
            signal.setitimer(signal.ITIMER_REAL, _TIMEOUT)
            try:
                exec(compile(_src, "<snippet>", "exec"), {"__name__": "__main__"})
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _SnippetTimeout:
        _err = "timed out after %%gs" %% _TIMEOUT
    except SystemExit as _e:
        _err = None if _e.code in (None, 0) else "SystemExit: %%s" %% (_e.code,)
    except BaseException as _e:
        _err = "%%s: %%s" %% (type(_e).__name__, _e)
    _out = _buf.getvalue()
    _results.append({"stdout": _out[:%d], "error": _err})
sys.stdout.write("\n@@FST_BATCH@@" + json.dumps(_results))
'''


def run_many(snippets: Sequence[str], *, timeout_each: float = 1.0, memory_mb: int = 512,
             output_limit: int = 4096) -> list[SandboxResult]:
    """Run many small, independent snippets in *one* sandboxed process (fast ground truth).

    Each snippet gets a fresh globals dict, captured stdout and its own timer. Snippets share the
    process, so this is for trusted-shape code (e.g. generated from templates); run model-written
    code with :func:`run_python`. If the whole batch fails, every result carries that error.
    """
    snippets = list(snippets)
    if not snippets:
        return []
    driver = _BATCH_DRIVER % (json.dumps(snippets), float(timeout_each), int(output_limit))
    total = timeout_each * len(snippets) + 5.0
    res = run_python(driver, timeout=total, memory_mb=memory_mb,
                     output_limit=(output_limit + 200) * len(snippets) + OUTPUT_LIMIT)
    marker = res.stdout.rfind("@@FST_BATCH@@")
    if marker < 0 or not res.ok:
        err = res.error or "batch driver produced no results"
        return [SandboxResult("", res.stderr, res.returncode, timed_out=res.timed_out, error=err)
                for _ in snippets]
    items = json.loads(res.stdout[marker + len("@@FST_BATCH@@"):])
    per = res.seconds / len(snippets)
    return [SandboxResult(it["stdout"], "", 0 if it["error"] is None else 1, timed_out="timed out" in (it["error"] or ""),
                          error=it["error"], seconds=per) for it in items]
