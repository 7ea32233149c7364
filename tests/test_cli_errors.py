"""Bad input at every ``fst-lab`` subcommand: exit code 2, exactly one line on stderr naming the culprit
(file, and line/field where there is one), and nothing created or changed on disk.

Table-driven: each case is (argv, files to set up, substrings the one line must contain). The commands
run in-process through ``fst_lab.cli.main(argv)``; two run through the real entry point in a subprocess.
No case loads a model: every input here is refused before that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fst_lab.cli import main
from fst_lab.config import FSTConfig

REPO = Path(__file__).resolve().parent.parent
SMALL = {"population_size": 2, "num_generations": 4, "runs_root": "runs"}


def _yaml(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


def _fake_run(path: Path, **config) -> None:
    """A run directory as the read-only loaders see it (config.yaml + state.json), without training."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(FSTConfig(**{**SMALL, **config}).to_yaml())
    (path / "state.json").write_text(json.dumps({"counters": {"cycle": 0, "rl_step": 0, "fast_round": 0},
                                                 "population": []}))
    (path / "metrics.jsonl").write_text("")


def _setup(tmp: Path) -> None:
    """The files every case may point at (created before the snapshot)."""
    (tmp / "bad_yaml.yaml").write_text("mode: fst\ncycles: [\n")
    (tmp / "typo.yaml").write_text(_yaml({**SMALL, "fast": {"budget_passes": 2, "budget_pases": 3}}))
    (tmp / "k_g.yaml").write_text(_yaml({"population_size": 3, "num_generations": 8, "runs_root": "runs"}))
    (tmp / "k_conflict.yaml").write_text(_yaml({**SMALL, "fast": {"population_size": 4}}))
    (tmp / "task.yaml").write_text(_yaml({**SMALL, "task": "mathh"}))
    (tmp / "type.yaml").write_text(_yaml({**SMALL, "slow": {"beta": "big"}}))
    (tmp / "range.yaml").write_text(_yaml({**SMALL, "slow": {"learning_rate": -0.001}}))
    (tmp / "list.yaml").write_text("- mode: fst\n")
    (tmp / "harness.yaml").write_text(_yaml({**SMALL, "harness": "no-such-harness"}))
    (tmp / "bad_harness.yaml").write_text("schema_version: 1\nname: [unclosed\n")
    (tmp / "uses_bad_harness.yaml").write_text(_yaml({**SMALL, "harness": str(tmp / "bad_harness.yaml")}))
    # what a later stage needs is checked before anything runs, not when the stage starts hours in
    stages = [{"task": "math", "steps": 2}, {"task": "hover", "steps": 2}]
    (tmp / "late_harness.yaml").write_text(_yaml({**SMALL, "stages": [stages[0], {**stages[1], "harness": "nope"}]}))
    (tmp / "late_kwargs.yaml").write_text(_yaml({**SMALL, "stages": [stages[0], {**stages[1],
                                                                                "task_kwargs": {"n_bogus": 3}}]}))
    (tmp / "dup.jsonl").write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n'
                                   '{"id": "a", "question": "2+2?", "answer": "4"}\n')
    (tmp / "badrow.jsonl").write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": \n')
    for name, path in (("dup", "dup.jsonl"), ("badrow", "badrow.jsonl"), ("nofile", "no_such.jsonl")):
        (tmp / f"jsonl_{name}.yaml").write_text(_yaml({**SMALL, "task": "jsonl",
                                                       "task_kwargs": {"path": str(tmp / path)}}))
    for name, kw in (("scorer", {"scorer": "fuzzy"}), ("kwarg", {"bogus": 1})):
        (tmp / f"jsonl_{name}.yaml").write_text(_yaml({**SMALL, "task": "jsonl",
                                                       "task_kwargs": {"path": str(REPO / "examples" / "my_task.jsonl"),
                                                                       **kw}}))
    (tmp / "n_train.yaml").write_text(_yaml({**SMALL, "task_kwargs": {"n_train": -1}}))
    (tmp / "model_path.yaml").write_text(_yaml({**SMALL, "model": str(tmp / "no_such_model")}))
    (tmp / "model_hub.yaml").write_text(_yaml({**SMALL, "model": "nobody-xyz/no-such-model-123"}))
    (tmp / "level.yaml").write_text(_yaml({**SMALL, "level": 9}))
    (tmp / "good.yaml").write_text(_yaml(SMALL))
    (tmp / "placeholder.yaml").write_text(_yaml({**SMALL, "model": "FILL_IN/policy"}))
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "not_a_run").mkdir()
    (tmp / "not_a_run" / "notes.txt").write_text("hello\n")
    _fake_run(tmp / "runs" / "good")
    _fake_run(tmp / "runs" / "broken_state")
    (tmp / "runs" / "broken_state" / "state.json").write_text('{"counters": ')
    _fake_run(tmp / "runs" / "broken_config")
    (tmp / "runs" / "broken_config" / "config.yaml").write_text("mode: [fst\n")
    _fake_run(tmp / "runs" / "edited_config")
    (tmp / "runs" / "edited_config" / "config.yaml").write_text(_yaml({**SMALL, "slow": {"lr": 0.1}}))
    _fake_run(tmp / "runs" / "gepa", mode="gepa")
    _fake_run(tmp / "runs" / "no_state")
    (tmp / "runs" / "no_state" / "state.json").unlink()


# (id, argv, substrings of the one stderr line); paths are relative to the test's tmp dir (the cwd)
CASES = [
    # run: config files
    ("run-missing-config", ["run", "missing.yaml"], ["missing.yaml", "not found"]),
    ("run-bad-yaml", ["run", "bad_yaml.yaml"], ["bad_yaml.yaml:", "invalid YAML"]),
    ("run-unknown-key", ["run", "typo.yaml"], ["typo.yaml:6:", "fast.budget_pases", "did you mean budget_passes?"]),
    ("run-k-not-dividing-g", ["run", "k_g.yaml"], ["k_g.yaml:1:", "population_size", "K=3 must divide"]),
    ("run-k-conflict", ["run", "k_conflict.yaml"], ["k_conflict.yaml:", "fast.population_size", "conflicts"]),
    ("run-unknown-task", ["run", "task.yaml"], ["task.yaml:", "task", "unknown task 'mathh'"]),
    ("run-bad-level", ["run", "level.yaml"], ["level.yaml:", "level", "has levels"]),
    ("run-wrong-type", ["run", "type.yaml"], ["type.yaml:", "slow.beta", "expected a number"]),
    ("run-out-of-range", ["run", "range.yaml"], ["range.yaml:", "slow.learning_rate", "must be > 0, got -0.001"]),
    ("run-not-a-mapping", ["run", "list.yaml"], ["list.yaml", "mapping"]),
    ("run-config-is-dir", ["run", "not_a_run"], ["not_a_run", "directory"]),
    ("run-unknown-harness", ["run", "harness.yaml"], ["harness.yaml:", "no-such-harness"]),
    ("run-malformed-harness", ["run", "uses_bad_harness.yaml"], ["uses_bad_harness.yaml:",
                                                                      "bad_harness.yaml:3: invalid YAML"]),
    ("run-jsonl-duplicate-id", ["run", "jsonl_dup.yaml"], ["dup.jsonl:2", "duplicate id 'a'"]),
    ("run-jsonl-bad-row", ["run", "jsonl_badrow.yaml"], ["badrow.jsonl:2", "invalid JSON"]),
    ("run-jsonl-missing-file", ["run", "jsonl_nofile.yaml"], ["no_such.jsonl", "not found"]),
    ("run-task-bad-scorer", ["run", "jsonl_scorer.yaml"], ["jsonl_scorer.yaml:5: task_kwargs:", "fuzzy"]),
    ("run-task-unknown-kwarg", ["run", "jsonl_kwarg.yaml"], ["jsonl_kwarg.yaml:5: task_kwargs:", "bogus"]),
    ("run-task-bad-number", ["run", "n_train.yaml"], ["n_train.yaml:4: task_kwargs:", "n_train"]),
    ("run-model-path-missing", ["run", "model_path.yaml"], ["model_path.yaml:4: model:", "no_such_model"]),
    ("run-model-not-cached", ["run", "model_hub.yaml"], ["model_hub.yaml:4: model:",
                                                          "nobody-xyz/no-such-model-123"]),
    ("run-placeholder-model", ["run", "placeholder.yaml"], ["placeholder.yaml:4: model:", "placeholder"]),
    ("run-bad-number", ["run", "good.yaml", "--cycles", "many"], ["--cycles", "'many'"]),
    ("run-negative-number", ["run", "good.yaml", "--cycles", "-1"], ["--cycles", "-1"]),
    ("run-bad-mode", ["run", "good.yaml", "--mode", "turbo"], ["--mode", "turbo"]),
    ("run-override-task", ["run", "good.yaml", "--task", "chess"], ["task", "unknown task 'chess'"]),
    ("run-runs-root-is-file", ["run", "good.yaml", "--runs-root", "a_file"], ["a_file", "not a directory"]),
    ("run-dir-exists", ["run", "good.yaml", "--run-name", "good"], ["runs/good", "already"]),
    ("run-dry-run-missing", ["run", "--dry-run", "missing.yaml"], ["missing.yaml", "not found"]),
    ("run-dry-run-typo", ["run", "--dry-run", "typo.yaml"], ["typo.yaml:6:", "fast.budget_pases"]),
    ("run-dry-run-malformed-harness", ["run", "--dry-run", "uses_bad_harness.yaml"],
     ["uses_bad_harness.yaml:4: harness:", "bad_harness.yaml:3: invalid YAML"]),
    ("run-later-stage-harness", ["run", "late_harness.yaml"], ["late_harness.yaml:9: stages[1].harness:", "'nope'"]),
    ("run-dry-run-later-stage-harness", ["run", "--dry-run", "late_harness.yaml"], ["late_harness.yaml:9:", "'nope'"]),
    ("run-later-stage-task-kwargs", ["run", "late_kwargs.yaml"], ["late_kwargs.yaml:", "stages[1].task_kwargs:",
                                                                  "n_bogus"]),
    ("run-dry-run-later-stage-task-kwargs", ["run", "--dry-run", "late_kwargs.yaml"], ["late_kwargs.yaml:", "n_bogus"]),
    # resume / eval: run directories
    ("resume-no-dir", ["resume", "no/such/run"], ["no/such/run"]),
    ("resume-not-a-run", ["resume", "not_a_run"], ["not_a_run", "config.yaml"]),
    ("resume-a-file", ["resume", "a_file"], ["a_file"]),
    ("resume-broken-state", ["resume", "runs/broken_state"], ["broken_state", "state.json"]),
    ("resume-broken-config", ["resume", "runs/broken_config"], ["broken_config/config.yaml:2:", "invalid YAML"]),
    ("resume-no-state", ["resume", "runs/no_state"], ["no_state", "state.json"]),
    ("resume-edited-config", ["resume", "runs/edited_config"], ["edited_config/config.yaml:", "slow.lr",
                                                                "did you mean learning_rate?"]),
    ("resume-bad-cycles", ["resume", "runs/good", "--cycles", "x"], ["--cycles", "'x'"]),
    ("eval-no-dir", ["eval", "no/such/run"], ["no/such/run"]),
    ("eval-not-a-run", ["eval", "not_a_run"], ["not_a_run", "config.yaml"]),
    ("eval-bad-n", ["eval", "runs/good", "--n", "0"], ["--n", "0"]),
    ("eval-edited-config", ["eval", "runs/edited_config"], ["edited_config/config.yaml:", "slow.lr"]),
    # compare: every input checked before runs/compare is created
    ("compare-missing", ["compare", "runs/good", "no/such/run"], ["no/such/run"]),
    ("compare-not-a-run", ["compare", "runs/good", "not_a_run"], ["not_a_run", "config.yaml"]),
    ("compare-broken-state", ["compare", "runs/good", "runs/broken_state"], ["broken_state", "state.json"]),
    ("compare-broken-config", ["compare", "runs/good", "runs/broken_config"], ["broken_config/config.yaml:",
                                                                               "invalid YAML"]),
    ("compare-out-is-file", ["compare", "runs/good", "--out", "a_file/plots"], ["a_file", "not a directory"]),
    # consolidate: refused before the run is resumed (resuming writes to it)
    ("consolidate-no-dir", ["consolidate", "no/such/run"], ["no/such/run"]),
    ("consolidate-not-a-run", ["consolidate", "not_a_run"], ["not_a_run", "config.yaml"]),
    ("consolidate-nothing-evolved", ["consolidate", "runs/good"], ["runs/good", "nothing to distil"]),
    ("consolidate-gepa-run", ["consolidate", "runs/gepa"], ["runs/gepa", "mode 'gepa'"]),
    ("consolidate-bad-steps", ["consolidate", "runs/good", "--steps", "0"], ["--steps", "0"]),
    ("consolidate-edited-config", ["consolidate", "runs/edited_config"], ["edited_config/config.yaml:", "slow.lr"]),
    # app / demo / prepare options
    ("app-bad-port", ["app", "--port", "99999"], ["--port", "99999"]),
    ("app-port-not-number", ["app", "--port", "http"], ["--port", "'http'"]),
    ("app-runs-root-is-file", ["app", "--runs-root", "a_file"], ["a_file", "not a directory"]),
    ("app-missing-harness-dir", ["app", "--harness-dir", "no_harnesses"], ["no_harnesses"]),
    ("demo-unknown-task", ["demo", "--task", "chess", "--runs-root", "demo_runs"], ["task", "unknown task 'chess'"]),
    ("demo-runs-root-is-file", ["demo", "--runs-root", "a_file"], ["a_file", "not a directory"]),
    ("demo-unknown-option", ["demo", "--fast"], ["demo: unrecognized arguments: --fast", "(see fst-lab demo --help)"]),
    ("run-unknown-option", ["run", "good.yaml", "--out", "x"], ["run: unrecognized arguments: --out x",
                                                               "(see fst-lab run --help)"]),
    ("prepare-unknown-model", ["prepare", "--model", "gpt-17"], ["gpt-17", "embedded"]),
    ("no-command", [], ["required"]),
    ("unknown-option-before-command", ["--bogus", "run", "good.yaml"], ["unrecognized arguments: --bogus",
                                                                        "(see fst-lab --help)"]),
    ("unknown-command", ["trian"], ["trian", "invalid choice"]),
]


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _setup(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/, runs/compare) would land in the snapshot
    return tmp_path


@pytest.mark.parametrize("argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, capsys, argv, needles):
    before = _snapshot(workdir)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fst-lab: error: ") and not lines[0].startswith("fst-lab: error: fst-lab"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    assert _snapshot(workdir) == before, "bad input must not create or change anything"


def test_the_table_covers_every_subcommand():
    from fst_lab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    covered = {argv[0] for _, argv, _ in CASES if argv}
    assert set(sub.choices) <= covered, set(sub.choices) - covered
    assert len(CASES) >= 20


def test_debug_shows_the_traceback(workdir):
    from fst_lab.config import ConfigError

    with pytest.raises(ConfigError, match="fast.budget_pases"):
        main(["--debug", "run", "typo.yaml"])
    with pytest.raises(ConfigError):
        main(["run", "typo.yaml", "--debug"])


def test_a_bug_keeps_its_traceback(workdir, monkeypatch):
    import fst_lab.report

    def broken(*a, **kw):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(fst_lab.report, "compare_runs", broken)
    with pytest.raises(ZeroDivisionError):
        main(["compare", "runs/good", "--out", "cmp"])


def _entry(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "fst-lab"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fst_lab.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_real_entry_point_one_line_and_exit_2(workdir):
    before = _snapshot(workdir)
    for args, needle in ((["run", "jsonl_dup.yaml"], "dup.jsonl:2: duplicate id 'a'"),
                         (["resume", "not_a_run"], "not_a_run")):
        r = _entry(args, workdir)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("fst-lab: error: ") and needle in r.stderr, r.stderr
    r = _entry(["--debug", "resume", "not_a_run"], workdir)
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert _snapshot(workdir) == before


def test_module_entry_point(workdir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "fst_lab.cli", "eval", "no/such/run"], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("fst-lab: error: ") and r.stderr.count("\n") == 1, r.stderr


def test_dry_run_prints_a_plan_and_writes_nothing(workdir, capsys):
    pytest.importorskip("fst_lab.plan", reason="fst_lab.plan (describe_plan) has not landed yet")
    before = _snapshot(workdir)
    assert main(["run", "--dry-run", "good.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and not err
    assert _snapshot(workdir) == before


def test_every_fst_lab_error_is_an_fst_lab_error():
    """One family: every public ``...Error`` class in fst_lab derives from FstLabError (the UIs are left out
    of the scan only because importing them loads gradio/ipywidgets)."""
    import importlib
    import pkgutil

    import fst_lab
    from fst_lab.errors import FstLabError

    found = {}
    for mod in pkgutil.walk_packages(fst_lab.__path__, "fst_lab."):
        if mod.name.startswith(("fst_lab.app", "fst_lab.ui")):
            continue
        m = importlib.import_module(mod.name)
        for name, obj in vars(m).items():
            if isinstance(obj, type) and issubclass(obj, Exception) and name.endswith("Error") \
                    and not name.startswith("_") and obj.__module__.startswith("fst_lab"):
                found[f"{obj.__module__}.{name}"] = obj
    assert {"fst_lab.errors.ConfigError", "fst_lab.harness.HarnessError", "fst_lab.runs.RunDirError",
            "fst_lab.session.SessionError", "fst_lab.tasks.user.TaskDataError"} <= set(found)
    assert [n for n, c in found.items() if not issubclass(c, FstLabError)] == []
