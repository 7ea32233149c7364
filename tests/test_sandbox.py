"""The sandbox contains what model-written code might do: loops, memory blow-ups, file and network
access, forks, and reading secrets. Each test runs real code in a real subprocess."""

from __future__ import annotations

import os
import socket
import time

import pytest

from fst_lab.sandbox import run_many, run_python



def test_runs_code_and_captures_output():
    r = run_python("import sys\nprint(sum(range(10)))\nprint('warn', file=sys.stderr)")
    assert r.ok and r.returncode == 0 and not r.timed_out and r.error is None
    assert r.stdout == "45\n" and "warn" in r.stderr


def test_bad_code_is_an_error_not_an_exception():
    r = run_python("def f(:\n  pass")
    assert not r.ok and "SyntaxError" in r.error
    r = run_python("x = 1 / 0")
    assert r.returncode == 1 and r.error == "ZeroDivisionError: division by zero"
    assert "<sandbox>" in r.stderr and "<string>" not in r.stderr  # only user frames, no prelude


def test_stdin_and_working_directory_files(tmp_path):
    r = run_python("import sys\nprint(sys.stdin.read().upper())\nopen('note.txt', 'w').write('kept')\n"
                   "print(open('note.txt').read())\nimport os\nprint(os.getcwd())", stdin="hello")
    assert r.ok, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["HELLO", "kept"]
    assert not os.path.exists(out[2]), "the throwaway working directory must be deleted afterwards"


def test_infinite_loop_times_out_quickly(child_pids):
    t0 = time.time()
    before = child_pids()
    r = run_python("while True:\n    pass", timeout=1.0)
    assert r.timed_out and not r.ok and "timed out" in r.error
    assert time.time() - t0 < 4.0
    assert child_pids() <= before, "the timed-out process group must be gone"


def test_write_outside_working_dir_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('pwned')")
    assert not r.ok and "PermissionError" in r.error
    assert not target.exists()
    r = run_python(f"import os\nos.remove({str(tmp_path)!r} + '/x')\n")
    assert "PermissionError" in r.error
    r = run_python(f"import shutil\nshutil.rmtree({str(tmp_path)!r})")
    assert "PermissionError" in r.error and tmp_path.exists()


def test_read_outside_working_dir_is_blocked(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    for code in (f"print(open({str(secret)!r}).read())", "print(open('/etc/passwd').read())",
                 "import os\nos.symlink('/etc/passwd', 'link')\nprint(open('link').read())",
                 "import os\nprint(os.listdir('/'))"):
        r = run_python(code)
        assert not r.ok and "PermissionError" in r.error, code
        assert "TOP-SECRET" not in r.stdout and "root:" not in r.stdout


def test_network_is_blocked():
    # A real listener on loopback: the sandboxed connect must fail *and* the listener must see nothing.
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)"):
            r = run_python(code, timeout=3.0)
            assert not r.ok and ("PermissionError" in r.stderr or "network access is disabled" in r.stderr), code
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_fork_bomb_and_subprocesses_are_blocked(child_pids):
    before = child_pids()
    r = run_python("import os\nwhile True:\n    os.fork()", timeout=2.0)
    assert not r.ok and "os.fork" in r.error
    for code in ("import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')",
                 "import os\nos.execv('/bin/true', ['true'])", "import os\nos.posix_spawn('/bin/true', ['true'], {})",
                 "import ctypes", "import os, signal\nos.kill(1, signal.SIGTERM)"):
        r = run_python(code)
        assert not r.ok and "PermissionError" in r.error, code
    assert child_pids() <= before


def test_memory_exhaustion_is_contained():
    r = run_python("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=128)
    assert not r.ok and "allocated" not in r.stdout
    assert "MemoryError" in r.error or "killed" in r.error
    # and this process is fine: a normal run right after still works
    assert run_python("print(2 + 3)").stdout == "5\n"


def test_secrets_in_parent_env_are_invisible(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-0123456789")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    r = run_python("import os\nprint(dict(os.environ))")
    assert r.ok
    assert "sk-canary" not in r.stdout and "OPENAI_API_KEY" not in r.stdout and "proxy.invalid" not in r.stdout


def test_output_is_capped():
    r = run_python("while True:\n    print('x' * 1000)", output_limit=10_000, timeout=5.0)
    assert r.output_truncated and len(r.stdout) <= 10_000 and "output exceeded" in r.error


def test_stdlib_still_works():
    r = run_python("import json, re, collections, math, random, dataclasses, datetime, fractions\n"
                   "from collections import namedtuple\nP = namedtuple('P', 'a b')\nprint(P(1, 2), math.gcd(12, 18))")
    assert r.ok, r.stderr
    assert r.stdout.strip() == "P(a=1, b=2) 6"


def test_run_many_isolates_snippets_in_one_process():
    t0 = time.time()
    snippets = [f"print({i} * {i})" for i in range(100)] + ["while True: pass", "1/0", "x = 5", "print(x)"]
    res = run_many(snippets, timeout_each=0.5)
    assert time.time() - t0 < 5.0
    assert [r.stdout for r in res[:3]] == ["0\n", "1\n", "4\n"] and all(r.ok for r in res[:100])
    assert res[100].timed_out and "timed out" in res[100].error
    assert res[101].error.startswith("ZeroDivisionError")
    assert res[103].error.startswith("NameError"), "each snippet gets fresh globals"
