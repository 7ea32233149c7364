"""The record schema (fst_lab.records), the run directory writer (fst_lab.rundir) and the session state the
faces read (busy, activity, progress events, "not evaluated") — on a tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fst_lab.config import FSTConfig
from fst_lab.models import tiny_policy
from fst_lab.runs import load_run, read_jsonl
from fst_lab.session import Session

REPO = Path(__file__).resolve().parent.parent


def tiny_config(tmp_path, **kw) -> FSTConfig:
    base = dict(task="math", cycles=2, steps_per_cycle=2, population_size=2, num_generations=2, prompts_per_step=1,
                fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=6, fast={"budget_passes": 1},
                slow={"learning_rate": 1e-3}, runs_root=str(tmp_path), run_name="r", seed=0, save_rollouts=2)
    base.update(kw)
    return FSTConfig(**base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two FST cycles (a fast step and two slow steps each, an evaluation at each end), then an ablation."""
    tmp = tmp_path_factory.mktemp("records")
    s = Session(tiny_config(tmp), policy=tiny_policy(seed=0), progress=False)
    s.evaluate()  # the start point of every curve (samples 0)
    s.run()
    s.channel_ablation()
    s.close()
    return s.run_dir


# ---------------------------------------------------------------------------- cumulative counters
def test_cumulative_counters_never_decrease_across_a_runs_records(run_dir):
    """On disk, as written: every metrics record carries the run's cumulative counters (a slow record's
    own rollout count is ``rollouts``, not ``samples``)."""
    recs = read_jsonl(run_dir / "metrics.jsonl")
    assert {r["kind"] for r in recs} == {"eval", "fast", "slow", "ablation"}
    for key in ("samples", "samples_rl", "samples_fast", "rl_step", "fast_round", "cycle"):
        xs = [r[key] for r in recs]
        assert xs == sorted(xs), f"{key} decreases: {xs}"
    for r in recs:
        assert r["samples"] == r["samples_rl"] + r["samples_fast"], r
    slow = [r for r in recs if r["kind"] == "slow"]
    assert [r["rollouts"] for r in slow] == [2] * 4  # 1 problem x G=2 per step
    assert [r["samples_rl"] for r in slow] == [2, 4, 6, 8]


def test_training_points_of_reward_vs_samples_have_strictly_increasing_x(run_dir):
    from fst_lab import records

    run = load_run(run_dir)
    xs, ys = run.series("slow", "reward")  # what every reward-vs-samples plot draws for training
    assert len(xs) == 4 and all(a < b for a, b in zip(xs, xs[1:])), xs
    assert (xs, ys) == records.series(run.metrics, "slow", "reward", x="samples")
    ex, _ = records.series(run.metrics, "eval", "reward")
    assert ex[0] == 0 and all(a < b for a, b in zip(ex, ex[1:])), ex


def test_one_kl_name(run_dir):
    """``kl`` is the probe KL (slow and eval records); nothing is written as kl_probe / kl_to_base."""
    recs = read_jsonl(run_dir / "metrics.jsonl")
    assert not any(k in r for r in recs for k in ("kl_probe", "kl_to_base", "kl_probe_bare"))
    slow = [r for r in recs if r["kind"] == "slow"]
    assert all(isinstance(r["kl"], float) and r["kl"] >= 0 for r in slow)
    assert all("kl" in r for r in recs if r["kind"] == "eval" and r["rl_step"] > 0)


def test_every_written_record_follows_the_schema(run_dir):
    from fst_lab import records

    for r in read_jsonl(run_dir / "metrics.jsonl"):
        assert r["kind"] in records.METRIC_KINDS
        assert set(records.COUNTERS) <= set(r), r["kind"]
    events = read_jsonl(run_dir / "events.jsonl")
    assert {e["event"] for e in events} >= {"start", "fast", "ablation", "close"}
    for e in events:
        assert set(e) - {"event", "ts"} <= set(records.EVENT_KEYS[e["event"]]), e


def test_old_run_directories_load_with_todays_keys(tmp_path):
    """A run written before the schema (slow ``samples`` per step, ``kl`` = TRL's, ``kl_probe``) reads
    through load_run with cumulative samples, ``rollouts`` and one KL name."""
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.yaml").write_text("mode: fst\ntask: math\n")
    (d / "state.json").write_text("{}")
    old = [{"kind": "eval", "rl_step": 0, "samples_rl": 0, "samples_fast": 0, "samples": 0, "reward": 0.1},
           {"kind": "fast", "round": 1, "samples_rl": 0, "samples_fast": 30, "samples": 30, "rollouts": 30},
           *[{"kind": "slow", "rl_step": i, "samples_rl": 8 * i, "samples_fast": 30, "samples": 8, "kl": 0.5,
              "kl_probe": 0.01 * i, "kl_probe_bare": 0.02, "samples_seen": 8 * i, "reward": 0.2} for i in (1, 2, 3)],
           {"kind": "eval", "rl_step": 3, "samples_rl": 24, "samples_fast": 30, "samples": 54, "reward": 0.3,
            "kl_probe": 0.03}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    run = load_run(d)
    xs, _ = run.series("slow", "reward")
    assert xs == [38, 46, 54]
    slow = [m for m in run.metrics if m["kind"] == "slow"]
    assert [m["rollouts"] for m in slow] == [8, 8, 8] and [m["kl_train"] for m in slow] == [0.5] * 3
    assert [m["kl"] for m in slow] == [0.01, 0.02, 0.03] and "kl_probe" not in slow[0]
    assert run.metrics[-1]["kl"] == 0.03
    from fst_lab.report import summary_rows

    row = summary_rows([d])[0]
    assert (row["kl_last"], row["val_first"], row["val_last"]) == (0.03, 0.1, 0.3)
    assert row["answers_last"] is None  # written before evaluations recorded their answers


def test_proposals_are_read_from_each_round_and_summarised_for_compare(run_dir, tmp_path):
    """A run's proposals come from every GEPA round's result file (a stale round moved aside is not one of them);
    `fst-lab compare` says what reflection and bootstrapping achieved, and nothing for a run without rounds."""
    import shutil

    from fst_lab.report import summary_rows
    from fst_lab.runs import load_run

    real = load_run(run_dir)
    assert [r["round"] for r in real.fast_rounds()] == [1, 2]  # the fixture's two cycles
    assert real.proposals() and {p["round"] for p in real.proposals()} <= {1, 2}
    assert all(p["operator"] in ("reflect", "bootstrap") for p in real.proposals())

    d = tmp_path / "hand"
    shutil.copytree(run_dir, d)
    shutil.rmtree(d / "fast")

    def write(name, rnd, log):
        (d / "fast" / name).mkdir(parents=True)
        (d / "fast" / name / "fst_fast_result.json").write_text(json.dumps({"round": rnd, "proposal_log": log}))

    def prop(op, status, **kw):
        return {"operator": op, "status": status, "detail": "", **kw}

    write("round_0001", 1, [prop("bootstrap", "accepted"), prop("reflect", "invalid", reason="no fenced block"),
                            prop("reflect", "rejected")])
    write("round_0002", 2, [prop("bootstrap", "rejected"), prop("reflect", "accepted")])
    write("round_0003", 3, [prop("reflect", "invalid", reason=r) for r in
                            ("no fenced block", "empty block", "cut off at the token limit", "no fenced block")]
          + [prop("reflect", "noop")])
    write("round_0002.stale-1", 2, [prop("reflect", "accepted")] * 5)  # scores from other weights: not read
    view = load_run(d)
    assert [(p["round"], p["operator"], p["status"]) for p in view.proposals()] == [
        (1, "bootstrap", "accepted"), (1, "reflect", "invalid"), (1, "reflect", "rejected"),
        (2, "bootstrap", "rejected"), (2, "reflect", "accepted")] + [(3, "reflect", "invalid")] * 4 + [
        (3, "reflect", "noop")]
    row = summary_rows([d])[0]  # every unusable reply accounted for: the two commonest by name, the rest counted
    assert row["reflections"] == "1 accepted, 2 valid of 8; 3 no fenced block, 1 empty block, 2 other"
    assert row["bootstraps"] == "1 accepted of 2"
    shutil.rmtree(d / "fast")
    assert summary_rows([d])[0]["reflections"] is None  # RL-only: no rounds, no claim


def test_compare_report_reads_the_schema(run_dir, tmp_path):
    from fst_lab.report import compare_runs

    table, pngs = compare_runs([run_dir], out_dir=tmp_path)
    assert run_dir.name in table and "kl_last" in table and "reflections" in table
    assert [p.name for p in pngs][:2] == ["reward_vs_samples.png", "kl_vs_reward.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_records_refuse_per_step_fields_named_like_counters():
    from fst_lab import records

    with pytest.raises(ValueError, match="cumulative"):
        records.make("slow", {"samples_rl": 4}, samples=2)
    rec = records.make("slow", {"samples_rl": 4, "samples_fast": 10, "rl_step": 2},
                       **records.slow_fields({"samples": 2, "kl": 0.3, "kl_probe": 0.1, "reward": 1.0}))
    assert (rec["samples"], rec["rollouts"], rec["kl"], rec["kl_train"]) == (14, 2, 0.1, 0.3)
    new_style = {"rollouts": 2, "kl": 0.1, "kl_bare": 0.2, "kl_train": 0.3, "reward": 1.0}
    assert records.slow_fields(new_style) == new_style


# ---------------------------------------------------------------------------- the run directory writer
_CRASH_WRITE = """
import os, signal, sys
from fst_lab.rundir import RunDir
from fst_lab.models import tiny_policy  # noqa: F401  (importable: the writer runs in a training process)
rd = RunDir(sys.argv[1])
rd.save_state({"counters": {"rl_step": 0}, "population": ["a"], "population_scores": {}, "seed_harness": "a"}, None)
rd.write_rollouts("slow_000001", [{"reward": 1.0}])
def die(*a, **k):  # the process dies after the temp file is written, before it is renamed into place
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = die
what = sys.argv[2]
if what == "state":
    rd.save_state({"counters": {"rl_step": 1}, "population": ["b"], "population_scores": {}, "seed_harness": "a"},
                  None)
else:
    rd.write_rollouts("slow_000001", [{"reward": 0.0}] * 1000)
"""


@pytest.mark.parametrize("what", ["state", "rollouts"])
def test_rundir_writes_are_atomic_a_kill_mid_write_leaves_the_old_file(tmp_path, what):
    from fst_lab.rundir import RunDir

    d = tmp_path / "run"
    d.mkdir()
    p = subprocess.run([sys.executable, "-c", _CRASH_WRITE, str(d), what], cwd=str(REPO), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    rd = RunDir(d)
    if what == "state":
        st = rd.read_state()
        assert st["counters"] == {"rl_step": 0} and st["population"] == ["a"]
    else:
        assert read_jsonl(d / "rollouts" / "slow_000001.jsonl") == [{"reward": 1.0}]


def test_rundir_stop_file_round_trip(tmp_path):
    from fst_lab.rundir import RunDir

    rd = RunDir(tmp_path)
    assert not rd.stop_requested()
    RunDir(tmp_path).request_stop()  # e.g. the app, another process
    assert rd.stop_requested()
    rd.clear_stop()
    assert not rd.stop_requested()


def test_a_stop_file_written_by_another_process_stops_the_run(tmp_path):
    s = Session(tiny_config(tmp_path, mode="rl", cycles=3, steps_per_cycle=1, eval_every_cycle=False),
                policy=tiny_policy(seed=0), progress=False)
    from fst_lab.rundir import RunDir

    RunDir(s.run_dir).request_stop()
    st = s.run()
    assert st["cycle"] == 0 and st["stopped"]
    assert [e["event"] for e in load_run(s.run_dir).events][-1] == "stop"
    s.close()


# ---------------------------------------------------------------------------- state for the faces
def test_a_manual_edit_reads_not_evaluated_until_scored(tmp_path):
    from fst_lab.runs import score_text

    s = Session(tiny_config(tmp_path), policy=tiny_policy(seed=0), progress=False)
    s.fast_step()
    assert s.population_scores  # the fast step scored its population
    # two scored members (the tiny model's GEPA round proposes nothing: add one as an earlier round would)
    parent = s.best_harness()
    other = parent.with_components({"system_prompt": "Another prompt.\n"}, origin="gepa", round=1,
                                   parents=[parent.id])
    s.population, s.population_scores = [parent, other], {parent.id: 0.5, other.id: 0.25}
    s._store(other)
    new = s.edit_harness(parent.id, {"system_prompt": "Be terse. End with 'Answer: <n>'.\n"}, note="test")
    assert new.id not in s.population_scores
    assert {x["id"]: x["score"] for x in s.lineage()}[new.id] is None
    assert score_text(s.population_scores.get(new.id)) == "not evaluated"
    assert s.best_harness().id == other.id  # an unscored edit is never "best" (its parent's score is not its)
    view = load_run(s.run_dir)
    assert new.id in view.state["population"] and new.id not in view.state["population_scores"]
    assert view.best_harness().id == other.id  # the app's and notebooks' "best" agrees with the session's
    assert s.run_dir.joinpath("harnesses", "current").is_dir()
    train = s._train_population()
    assert len(train) == 2 and new in train  # the slow loop still trains on it
    s.fast_step()  # re-scores the population: now it has a score (if GEPA kept it) or is gone
    assert new not in s.population or new.id in s.population_scores
    assert score_text(0.5625) == "0.562"
    s.close()


def test_busy_and_activity_while_a_step_runs_on_another_thread(tmp_path):
    """A notebook cell (here: a thread) runs slow steps; another thread sees busy/activity the whole time,
    and listeners get progress events that are never written to disk."""
    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(seed=0), progress=False)
    events: list[dict] = []
    s.listeners.append(events.append)
    assert not s.busy and s.activity is None
    t = threading.Thread(target=s.slow_step, args=(3,))
    t.start()
    seen = set()
    while t.is_alive():
        if s.busy:
            seen.add(s.activity)
            assert s.status()["busy"]
        time.sleep(0.01)
    t.join()
    assert not s.busy and s.activity is None
    assert any(a and a.startswith("slow step") for a in seen), seen
    prog = [e for e in events if e.get("event") == "progress"]
    assert [(e["phase"], e["i"], e["n"]) for e in prog] == [("rl", i, 3) for i in (0, 1, 1, 2, 2, 3)]
    assert sum(e.get("kind") == "slow" for e in events) == 3
    assert not any(e["event"] == "progress" for e in read_jsonl(s.run_dir / "events.jsonl"))
    s.close()


def test_fast_step_progress_events(tmp_path):
    s = Session(tiny_config(tmp_path), policy=tiny_policy(seed=0), progress=False)
    events: list[dict] = []
    s.listeners.append(events.append)
    s.fast_step()
    prog = [e for e in events if e.get("event") == "progress"]
    phases = [e["phase"] for e in prog]
    assert phases[0] == "rollouts" and "gepa" in phases
    gepa = [(e["i"], e["n"]) for e in prog if e["phase"] == "gepa"]
    assert len({i for i, _ in gepa}) >= 2 and gepa[-1][0] == gepa[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(gepa, gepa[1:]))
    s.close()


def test_activity_says_paused_while_a_run_waits(tmp_path):
    s = Session(tiny_config(tmp_path, mode="rl", cycles=2, steps_per_cycle=1, eval_every_cycle=False),
                policy=tiny_policy(seed=0), progress=False)
    s.pause()
    t = threading.Thread(target=s.run)
    t.start()
    deadline = time.time() + 60
    while s.activity != "paused (run: cycle 1/2)" and time.time() < deadline:
        time.sleep(0.02)
    assert s.busy and s.paused and s.activity == "paused (run: cycle 1/2)" and s.counters["rl_step"] == 0
    s.resume_work()
    t.join(timeout=300)
    assert not t.is_alive() and s.counters["cycle"] == 2 and not s.busy
    s.close()
