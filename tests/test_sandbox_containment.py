"""Escape attempts from model-written tool code, beyond tests/test_sandbox.py: other ways to write or read
outside the working directory, other socket families, other ways to start processes, ways to outlast
the limits — and, above all, that the *run goes on*: the test process is unharmed and a multi-turn
rollout whose model keeps calling hostile code finishes with error observations and a score.

Every case runs real code in a real sandboxed subprocess (fst_lab.sandbox.run_python).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fst_lab.sandbox import run_python

CANARY = "sk-sandbox-canary-7f3a9c"



def _sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fst_sandbox_*")}


# name -> (code, substring expected in the error). ``{out}`` is a path outside the working directory.
ESCAPES = {
    # writes outside the working directory, by every route that isn't the plain open() already tested
    "write_fileio": ("import _io\n_io.FileIO({out!r}, 'w')", "PermissionError"),
    "write_os_open": ("import os\nos.open({out!r}, os.O_WRONLY | os.O_CREAT)", "PermissionError"),
    "write_pathlib": ("import pathlib\npathlib.Path({out!r}).write_text('x')", "PermissionError"),
    "write_builtins": ("import builtins\nbuiltins.open({out!r}, 'a').write('x')", "PermissionError"),
    "write_relative": ("open('../../../../../../' + {out!r}.lstrip('/'), 'w').write('x')", "PermissionError"),
    "write_rename_out": ("open('a', 'w').write('x')\nimport os\nos.replace('a', {out!r})", "PermissionError"),
    "write_symlink_out": ("import os\nos.symlink({out!r}, 'l')\nopen('l', 'w').write('x')", "PermissionError"),
    "write_dev_shm": ("open('/dev/shm/fst_escape', 'w').write('x')", "PermissionError"),
    "chdir_up": ("import os\nos.chdir('..')\nopen('x', 'w')", "PermissionError"),
    "makedirs_out": ("import os\nos.makedirs({out!r} + '_dir/a')", "PermissionError"),
    # reads of secrets outside it
    "read_parent_environ": ("import os\nprint(open('/proc/%d/environ' % os.getppid(), 'rb').read())",
                            "PermissionError"),
    "read_self_environ": ("print(open('/proc/self/environ', 'rb').read())", "PermissionError"),
    "read_parent_cmdline": ("import os\nprint(open('/proc/%d/cmdline' % os.getppid()).read())", "PermissionError"),
    "read_hardlink": ("import os\nos.link('/etc/passwd', 'p')\nprint(open('p').read())", "PermissionError"),
    "read_list_home": ("import os\nprint(list(os.scandir('/root')))", "PermissionError"),
    "read_program_file": ("import os\nprint(open(os.path.join('..', 'program.py')).read())", "PermissionError"),
    # network, by families other than TCP
    "net_udp": ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
                "s.sendto(b'x', ('127.0.0.1', 9))", "PermissionError"),
    "net_unix": ("import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect('/var/run/docker.sock')",
                 "PermissionError"),
    "net_dns": ("import socket\nsocket.getaddrinfo('pypi.org', 443)", "PermissionError"),
    "net_http_client": ("import http.client\nhttp.client.HTTPConnection('127.0.0.1', 1).request('GET', '/')",
                        "PermissionError"),
    # processes, by routes other than os.fork / subprocess
    "proc_forkpty": ("import os\nos.forkpty()", "PermissionError"),
    "proc_spawnp": ("import os\nos.posix_spawnp('true', ['true'], {})", "PermissionError"),
    "proc_multiprocessing": ("import multiprocessing\nmultiprocessing.Process(target=print).start()",
                             "PermissionError"),
    "proc_posix_system": ("import posix\nposix.system('touch /tmp/fst_escape_posix')", "PermissionError"),
    "proc_pty": ("import pty\npty.spawn('/bin/sh')", "PermissionError"),
    "proc_setsid": ("import os\nos.setsid()", "Operation not permitted"),
    # limits the code might try to lift or outrun
    "raise_memory_limit": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "Error"),
    "memory_list": ("x = [0] * (10 ** 9)\nprint('allocated')", "MemoryError"),
    "memory_str": ("s = 'a' * (10 ** 10)\nprint('allocated')", "MemoryError"),
    "big_file": ("open('big', 'wb').write(b'x' * (64 * 1024 * 1024))", "File too large"),
    "many_files": ("fs = [open('f%d' % i, 'w') for i in range(10000)]", "Too many open files"),
    "thread_bomb": ("import threading, time\nfor _ in range(100000):\n"
                    "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()", ""),
}
FOREVER = {
    "sleep": "import time\ntime.sleep(10 ** 6)",
    "sigterm_ignored_spin": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
    "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)",
    "closed_pipes_spin": "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass",
    "stdin_wait": "import sys\nsys.stdin.read()\nimport time\ntime.sleep(10 ** 6)",
    "busy_threads": "import threading\ndef spin():\n    while True:\n        pass\n"
                    "for _ in range(8):\n    threading.Thread(target=spin).start()",
}


def _fill(code: str, out: str) -> str:
    return code.replace("{out!r}", repr(out))


@pytest.fixture
def outside(tmp_path):
    return str(tmp_path / "escaped.txt")


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempt_is_contained(name, outside, tmp_path, monkeypatch, child_pids):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)  # what a /proc/<ppid>/environ read would steal
    code, expected = ESCAPES[name]
    before_kids = child_pids()
    t0 = time.time()
    r = run_python(_fill(code, outside), timeout=3.0, memory_mb=128)
    assert not r.ok, f"{name}: the sandbox let it succeed: {r.stdout[:200]!r}"
    assert expected in (r.error or "") + r.stderr, f"{name}: {r.error!r}"
    assert time.time() - t0 < 8.0
    assert CANARY not in r.stdout + r.stderr
    assert "allocated" not in r.stdout
    assert not any(tmp_path.iterdir()), f"{name}: something was created outside: {list(tmp_path.iterdir())}"
    for p in ("/dev/shm/fst_escape", "/tmp/fst_escape_posix"):
        assert not os.path.exists(p), p
    assert child_pids() <= before_kids


@pytest.mark.parametrize("name", sorted(FOREVER))
def test_code_that_never_ends_is_stopped(name, child_pids):
    before_kids = child_pids()
    t0 = time.time()
    r = run_python(FOREVER[name], timeout=1.0)
    assert not r.ok and r.error
    assert time.time() - t0 < 5.0, f"{name} took {time.time() - t0:.1f}s"
    assert child_pids() <= before_kids, "the whole process group must be gone"


@pytest.mark.parametrize("fn", ["mkfifo", "mknod"])
def test_special_file_creation_outside_is_blocked(fn, outside, tmp_path):
    r = run_python(f"import os\nos.{fn}({outside!r})")
    assert not os.path.exists(outside), f"os.{fn} created {outside} outside the working directory"
    assert not r.ok


def test_block_device_nodes_give_no_raw_disk_access():
    # Running as root, a device node *inside* the working directory would pass the path checks.
    major_minor = None
    try:
        for line in Path("/proc/partitions").read_text().splitlines()[2:]:
            parts = line.split()
            if len(parts) == 4:
                major_minor = (int(parts[0]), int(parts[1]))
                break
    except OSError:
        pass
    if major_minor is None:
        pytest.skip("no block device listed in /proc/partitions")
    code = ("import os, stat\nos.mknod('disk', stat.S_IFBLK | 0o600, os.makedev(%d, %d))\n"
            "print(len(open('disk', 'rb').read(512)), 'raw bytes')" % major_minor)
    r = run_python(code)
    assert "raw bytes" not in r.stdout and not r.ok


def test_test_process_is_unharmed_after_a_barrage(child_pids):
    """After many hostile runs in a row: no stray children, no leaked temp dirs, our limits and
    environment untouched, fds not leaked, and ordinary code still runs."""
    kids, dirs = child_pids(), _sandbox_dirs()
    limits = {k: resource.getrlimit(getattr(resource, k)) for k in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_CPU")}
    cwd, env = os.getcwd(), dict(os.environ)
    nfds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for code, _ in list(ESCAPES.values())[::3]:
        run_python(_fill(code, "/tmp/fst_escape_barrage"), timeout=1.5, memory_mb=128)
    for code in FOREVER.values():
        run_python(code, timeout=0.5)
    assert child_pids() <= kids
    assert _sandbox_dirs() <= dirs, "throwaway working directories must be deleted"
    assert {k: resource.getrlimit(getattr(resource, k)) for k in limits} == limits
    assert os.getcwd() == cwd and dict(os.environ) == env
    assert len(os.listdir("/proc/self/fd")) <= nfds + 2
    assert threading.active_count() <= threads
    assert not os.path.exists("/tmp/fst_escape_barrage")
    r = run_python("print(sum(range(101)))")
    assert r.ok and r.stdout == "5050\n"
    x = bytearray(64 * 1024 * 1024)  # this process can still allocate freely
    assert len(x) == 64 * 1024 * 1024


# ---------------------------------------------------------------------------- a rollout goes on
class _ScriptedPolicy:
    """A stand-in policy: turn k of every conversation replies with ``script[k]`` (a tool call or an answer)."""

    def __init__(self, script: list[str]):
        self.script = script

    def chat_prompt(self, messages, tools=None) -> str:
        return json.dumps(messages)

    def generate_text(self, prompts, *, max_new_tokens=128, temperature=0.0, seed=None, batch_size=16, **_):
        from fst_lab.models import Generation

        out = []
        for p in prompts:
            k = min(sum(m["role"] == "assistant" for m in json.loads(p)), len(self.script) - 1)
            text = self.script[k]
            out.append(Generation(text=text, prompt_tokens=len(p), completion_tokens=len(text), finished=True,
                                  completion_ids=[1] * len(text)))
        return out


def _call(code: str) -> str:
    return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"


def test_rollout_with_hostile_tool_code_finishes_and_scores(tmp_path, child_pids):
    from fst_lab.harness import Harness
    from fst_lab.rollout import rollout
    from fst_lab.tasks import get_task

    task = get_task("math", level=1, seed=0)
    ex = task.examples("val", 1)[0]
    target = tmp_path / "pwned.txt"
    hostile = [
        _call(f"open({str(target)!r}, 'w').write('pwned')"),
        _call("import os\nwhile True:\n    os.fork()"),
        _call("x = bytearray(1 << 34)"),
        _call("while True:\n    pass"),
        _call("import socket\nsocket.create_connection(('127.0.0.1', 22))"),
        _call("print(open('/proc/%d/environ' % __import__('os').getppid()).read())"),
        f"All tools failed, but I can do it myself.\nAnswer: {ex.answer}",
    ]
    h = Harness.from_dict({
        "schema_version": 1, "name": "with-python", "inputs": ["question"], "system_prompt": "Use tools.\n",
        "task_template": "{question}", "few_shot": [],
        "tools": [{"type": "function", "function": {
            "name": "python", "description": "Run Python code and return what it prints.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}],
        "loop": {"max_turns": len(hostile), "max_new_tokens": 64, "temperature": 0.0},
        "evolvable": ["system_prompt"]})
    kids = child_pids()
    t0 = time.time()
    os.environ["FST_SANDBOX_TEST_CANARY"] = CANARY
    try:
        [traj] = rollout(_ScriptedPolicy(hostile), h, [ex], task)
    finally:
        del os.environ["FST_SANDBOX_TEST_CANARY"]
    assert time.time() - t0 < 60
    assert traj.n_turns == len(hostile), "every turn ran: a hostile tool call never ends the rollout"
    obs = [c["observation"] for c in traj.tool_calls]
    assert len(obs) == len(hostile) - 1
    assert all("ERROR" in o for o in obs), obs
    assert "timed out" in obs[3]
    assert traj.reward == 1.0 and traj.error is None, (traj.reward, traj.feedback)
    assert not target.exists()
    assert CANARY not in json.dumps(traj.to_json())
    assert child_pids() <= kids
    # and the same process rolls out again, normally
    [t2] = rollout(_ScriptedPolicy([_call("print(6 * 7)"), "Answer: 42"]), h, [ex], task)
    assert t2.tool_calls[0]["observation"] == "42" and t2.tool_calls[0]["error"] is None
