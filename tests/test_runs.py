"""Run-directory loaders are pure: no torch/TRL imports, no unpickling, confined to a root."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fst_lab.rundir import append_jsonl
from fst_lab.runs import RunDirError, load_run, read_jsonl, safe_run_path


def test_torn_last_line_is_skipped(tmp_path):
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"a": 1})
    append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3, "b"')  # crash mid-append
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_path_traversal_refused(tmp_path):
    root = tmp_path / "runs"
    (root / "r1").mkdir(parents=True)
    assert safe_run_path("r1", root) == (root / "r1").resolve()
    for bad in ("../../etc", "/etc", "r1/../../x"):
        with pytest.raises(RunDirError, match="outside the runs root"):
            safe_run_path(bad, root)
    (root / "link").symlink_to("/etc")
    with pytest.raises(RunDirError, match="outside the runs root"):
        safe_run_path("link", root)


def test_not_a_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run(tmp_path)


def test_loader_never_imports_training_code_or_unpickles(tmp_path):
    """A run dir with a booby-trapped pickle: loading it must not execute anything nor import torch."""
    run = tmp_path / "run"
    (run / "harnesses" / "all").mkdir(parents=True)
    (run / "populations").mkdir()
    (run / "fast" / "round_0001").mkdir(parents=True)
    (run / "config.yaml").write_text("mode: fst\ntask: math\n")
    (run / "events.jsonl").write_text(json.dumps({"event": "start"}) + "\n")
    (run / "state.json").write_text(json.dumps({"counters": {"cycle": 1}, "population": []}))
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "fast" / "round_0001" / "gepa_state.bin").write_bytes(pickle.dumps(Evil()))
    code = textwrap.dedent(f"""
        import sys
        from fst_lab.runs import load_run, list_runs
        r = load_run({str(run)!r})
        r.all_harnesses(); r.lineage_edges(); r.population_record(); r.rollouts()
        list_runs({str(tmp_path)!r})
        bad = [m for m in ("torch", "transformers", "trl", "gepa", "peft") if m in sys.modules]
        assert not bad, bad
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    assert not marker.exists()
