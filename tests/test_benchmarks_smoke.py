"""Every benchmark's ``--smoke`` mode runs end to end and the doc renders from its results.

These check the pipeline (tiny random model, tiny counts), not the numbers. Results, plots and the
rendered doc go to a temporary directory, never to benchmarks/results or docs/.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` lives at the repo root
from benchmarks import run_all  # noqa: E402


def _smoke(name: str, out) -> dict:
    mod = run_all._module(name)
    argv = ["--smoke", "--out", str(out / f"{name}.json" if name == "slow_overhead" else out)]
    mod.main(argv)
    data = json.loads((out / f"{name}.json").read_text())
    assert data, name
    return data


def test_rollout_smoke(tmp_path):
    res = _smoke("rollout", tmp_path)
    assert res["smoke"] is True and res["throughput"]
    for row in res["throughput"]:
        assert row["fst_lab_tokens"] > 0 and row["plain_tokens"] > 0
        assert row["identical_ids"], "fst_lab rollout and plain generate must produce the same greedy tokens"
        assert row["fst_vs_plain"]["median"] > 0
    assert {r["task"] for r in res["generate_share"]} == {"math", "hover"}
    assert res["profile_batch1"]["cprofile_stages_s"]["rollout total"] > 0
    assert isinstance(res["llama_cpp"], str)  # "not installed" / "skipped in smoke mode": never a failure


def test_fast_overhead_smoke(tmp_path):
    res = _smoke("fast_overhead", tmp_path)
    (pair,) = res["pairs"]
    assert pair["ours_s"] > 0 and pair["plain_s"] > 0
    # same adapter, greedy rollouts, scripted reflector: both sides do identical work
    assert pair["ours_metric_calls"] == pair["plain_metric_calls"]
    assert pair["same_candidates"]
    assert "ratio_geomean" in res


@pytest.mark.slow
def test_slow_overhead_smoke(tmp_path):
    res = _smoke("slow_overhead", tmp_path)
    assert res["pairs"] and res["ratio_geomean"] > 0


@pytest.mark.slow
def test_efficiency_smoke(tmp_path):
    res = _smoke("efficiency", tmp_path)
    modes = {r["mode"] for r in res["runs"]}
    assert modes == {"fst", "rl", "gepa"}
    fst = next(r for r in res["runs"] if r["mode"] == "fst")
    assert set(fst["ablation"]) == {"base_weights+seed_harness", "base_weights+evolved_harness",
                                    "trained_weights+seed_harness", "trained_weights+evolved_harness"}
    evals = [r for r in fst["records"] if r["kind"] == "eval"]
    assert evals[0]["all_rollouts"] == 0 and len(evals) == 1 + 2  # start + one per cycle
    a = res["analysis"]["default/math"]
    assert set(a["curves"]) == {"fst", "rl", "gepa"}
    assert "samples_ratio_mean_curve" in a and "ablation" in a


@pytest.mark.slow
def test_continual_smoke(tmp_path):
    res = _smoke("continual", tmp_path)
    assert {r["mode"] for r in res["runs"]} == {"fst", "rl"}
    for r in res["runs"]:
        assert [e["task"] for e in r["evals"] if e["where"] == "start"] == ["hover", "codeio", "physics"]
        assert {m["stage"] for m in r["slow"]} == {0, 1, 2}
        assert set(r["retention"]) == {"hover", "codeio", "physics"}
        assert r["seed_harness"] == "task"  # the default: each stage starts from its task's seed harness
    stages = res["configs"]["task/hover-codeio-physics"]["stages"]
    assert [(st["task"], st["harness"]) for st in stages] == [(t, t) for t in ("hover", "codeio", "physics")]


def test_docs_render_from_results(tmp_path):
    """The doc renders from whatever results exist (missing ones say how to run them)."""
    _smoke("rollout", tmp_path)
    path = run_all.render_docs(tmp_path, smoke=True)
    text = path.read_text()
    assert path.parent == tmp_path
    assert "## Rollout throughput" in text and "## Machine and versions" in text
    assert "CMAKE_ARGS" in text  # the llama.cpp build recipe is documented
    assert "Not run yet" in text  # e.g. efficiency, which this test did not run


@pytest.mark.slow
def test_powered_grid_smoke_resumes_and_skips(tmp_path, capsys):
    """Issue 21's runner at smoke size: runs finish and are recorded; a run stopped after its first RL step
    (as at a session's end) resumes to the same final counters as an uninterrupted run of the same seed;
    a second invocation skips finished runs; the analysis has bands over seeds and the plots exist."""
    from benchmarks import bench_powered as bp
    from benchmarks.common import load_result
    from fst_lab.rundir import RunDir
    from fst_lab.runs import load_run

    a, b = tmp_path / "a", tmp_path / "b"
    bp.main(["--smoke", "--out", str(a), "--only", "math-fst-s0", "--stop-after-steps", "1"])
    res = json.loads((a / "powered.json").read_text())
    assert res["runs"] == [] and res["in_progress"] == ["math-fst-s0"]
    assert RunDir(a / "runs" / "math-fst-s0").load_state()["counters"]["rl_step"] == 1

    bp.main(["--smoke", "--out", str(a)])  # resumes math-fst-s0, runs the other five
    res = load_result(a, "powered")
    assert sorted(r["name"] for r in res["runs"]) == sorted(f"math-{m}-s{s}" for m in bp.MODES for s in (0, 1))
    assert res["in_progress"] == []
    resumed = next(r for r in res["runs"] if r["name"] == "math-fst-s0")
    assert len(resumed["segments"]) == 2 and resumed["seconds"] == pytest.approx(
        sum(x["seconds"] for x in resumed["segments"]), abs=0.2)
    assert [e["rl_step"] for e in resumed["evals"]] == [0, 1, 2]  # the start evaluation is not repeated
    import torch

    # each session's segment names the machine it ran on (sessions may land on different CPUs)
    assert all(x["cpu"] and x["torch_threads"] == torch.get_num_threads() and isinstance(x["cpu_flags"], list)
               for x in resumed["segments"])
    for r in res["runs"]:
        assert r["git_commit"] and r["loadavg"] and r["config"]["seed"] == r["seed"]
        assert r["config"]["mode"] == r["mode"]
        # the population's harnesses by lineage origin, read from the run directory (the seed is always one)
        assert r["harness_origins"] == bp.harness_origins(a / "runs" / r["name"]) and r["harness_origins"]["seed"] == 1
        assert r["mode"] != "rl" or r["harness_origins"] == {"seed": 1}
        assert r["reflection_outcomes"] == bp.reflection_outcomes(a / "runs" / r["name"])
        assert r["mode"] != "rl" or r["reflection_outcomes"] == {}
        # what RL sampled, from the run's RL step records (both smoke RL steps fall in the first and last window)
        slow = [m for m in load_run(a / "runs" / r["name"]).metrics if m.get("kind") == "slow"]
        if r["mode"] == "gepa":
            assert r["train_answers"] is None and not slow
        else:
            shares = [m["fst/answer_unparsed"] for m in slow]
            assert len(shares) == 2 and all(0 <= x <= 1 for x in shares)
            assert r["train_answers"]["unparsed_first"] == r["train_answers"]["unparsed_last"] == pytest.approx(
                sum(shares) / 2, abs=1e-4)
    cfgs = [{k: v for k, v in r["config"].items() if k not in ("mode", "seed", "run_name")}
            for r in res["runs"]]
    assert all(c == cfgs[0] for c in cfgs), "the modes must differ only in mode (and seed)"

    bp.main(["--smoke", "--out", str(b), "--only", "math-fst-s0"])  # the same run, never interrupted
    straight = load_result(b, "powered")["runs"][0]
    assert resumed["counters"] == straight["counters"]
    assert resumed["counters"]["rl_step"] == 2 and resumed["counters"]["fast_round"] == 2

    capsys.readouterr()
    before = (a / "powered.json").read_text()
    again = bp.main(["--smoke", "--out", str(a)])
    assert capsys.readouterr().out.count("skip math-") == 6
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in json.loads(before)["runs"]]

    an = again["analysis"]["default/math"]
    assert set(an["bands"]) == set(bp.MODES) and "rl_step" not in an["bands"]["gepa"]
    for mode, bands in an["bands"].items():
        for bd in bands.values():
            assert len(bd["x"]) == len(bd["mean"]) == len(bd["lo"]) == len(bd["hi"]) >= 2
            assert all(lo <= m <= hi for lo, m, hi in zip(bd["lo"], bd["mean"], bd["hi"]))
            assert bd["n"][-1] == 2
    assert set(an["ablation"]) == {"base_weights+seed_harness", "base_weights+evolved_harness",
                                   "trained_weights+seed_harness", "trained_weights+evolved_harness"}
    assert an["reach"]["fst"]["samples"]["reached"] <= 2 and "speedup_samples" in an and "kl_matched" in an
    for p in ("powered_reward_vs_steps.png", "powered_reward_vs_samples.png", "powered_ablation.png"):
        assert (a / "plots" / p).stat().st_size > 0
    text = bp.markdown(again)
    assert "6 of 6 runs finished" in text
    more = bp.markdown({**again, "grid": again["grid"] + ["hover-rl-s0"]})
    assert "Missing (not started): hover-rl-s0" in more
    assert "--threads 2 --tasks hover --modes rl --deadline 150" in more
    fst0 = next(r for r in again["runs"] if r["name"] == "math-fst-s0")["train_answers"]
    assert f"no answer {fst0['unparsed_first']:.0%} → {fst0['unparsed_last']:.0%}" in text

    # Each run's final answers (a collapse to one label reads as a reward): kept with its last evaluation;
    # a record from before that is re-evaluated by --answers to the same reward and the same statistics.
    assert {m: d["runs"] for m, d in an["answers"].items()} == {m: 2 for m in ("start", *bp.MODES)}
    assert "The final evaluation's answers" in text
    from benchmarks.common import save_result

    res = load_result(a, "powered")
    old = next(r for r in res["runs"] if r["name"] == "math-rl-s1")
    want = {w: bp.answers(old, w) for w in ("start", "final")}
    assert set(want["final"]) == set(bp.ANSWER_KEYS) and 0.0 <= want["final"]["answer_top_share"] <= 1.0
    for r in res["runs"]:  # as recorded before: no statistics in math-rl-s1's evaluations, nor in seed 1's starts
        for e in r["evals"] if r["name"] == "math-rl-s1" else r["evals"][:1] if r["seed"] == 1 else []:
            for k in bp.ANSWER_KEYS:
                del e[k]
    assert bp.answers(old) is None and bp.answers(old, "start") is None
    save_result(a, "powered", res)
    bp.main(["--smoke", "--out", str(a), "--answers", "--only", "math-rl-s1"])
    new = next(r for r in load_result(a, "powered")["runs"] if r["name"] == "math-rl-s1")
    assert bp.answers(new) == {**want["final"], "reward": old["evals"][-1]["reward"]}
    assert bp.answers(new, "start") == {**want["start"], "reward": old["evals"][0]["reward"]}
    assert load_result(a, "powered")["analysis"]["default/math"]["answers"]["start"]["runs"] == 2  # seeds 0, 1


@pytest.mark.slow
def test_powered_run_killed_mid_run_keeps_its_time_to_its_last_step(tmp_path):
    """A grid process killed without warning (kill -9, a session's hard end) leaves its wall-time segment as of
    its last RL step; the resumed run counts that time, marks the segment interrupted and records the commit
    each process ran."""
    import subprocess
    import sys

    from benchmarks import bench_powered as bp
    from benchmarks.common import REPO

    child = (  # dies (os._exit, no finally blocks) right after it wrote its first step-boundary segment
        "import os, sys\n"
        "from benchmarks import bench_powered as bp\n"
        "write = bp._write_json\n"
        "def write_then_die(path, data):\n"
        "    write(path, data)\n"
        "    if path.name.endswith('.segments.json') and data[-1].get('ended') is None:\n"
        "        os._exit(137)\n"
        "bp._write_json = write_then_die\n"
        "bp.main(sys.argv[1:])\n")
    out = tmp_path / "res"
    args = ["--smoke", "--out", str(out), "--only", "math-rl-s0"]
    proc = subprocess.run([sys.executable, "-c", child, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-2000:]
    left = json.loads((out / "runs" / "math-rl-s0.segments.json").read_text())
    assert len(left) == 1 and left[0]["ended"] is None and left[0]["seconds"] > 0 and left[0]["last_step"]

    rec = bp.main(args)["runs"][0]
    first, second = rec["segments"]
    assert first["interrupted"] and first["seconds"] == left[0]["seconds"] and first["ended"] == left[0]["last_step"]
    assert second["ended"] and not second.get("interrupted")
    assert rec["seconds"] == pytest.approx(first["seconds"] + second["seconds"], abs=0.2)
    assert rec["git_commit"] == second["git_commit"] and rec["git_commits"] == [first["git_commit"]]
    assert rec["counters"]["rl_step"] == 2



def test_powered_gepa_only_run_stops_at_a_round_under_the_deadline_and_keeps_its_time(tmp_path):
    """GEPA-only runs have no RL steps: a GEPA round is their boundary. A deadline already past stops the run
    after its first round with its time written; the next invocation resumes it to the end and sums both."""
    from benchmarks import bench_powered as bp

    root = tmp_path / "runs"
    root.mkdir()
    spec = bp.grid(["math"], ["gepa"], [0], "default")[0]
    cfg = bp.apply_variant(bp.base_config("math", 0, True), "default", "gepa")
    assert bp.run_one(spec, cfg, root, smoke=True, stop_after=None, deadline=time.time() - 1) is None
    left = json.loads((root / "math-gepa-s0.segments.json").read_text())
    assert left[0]["seconds"] > 0 and left[0]["ended"]
    assert bp.run_progress(root, "math-gepa-s0") == pytest.approx(1 / 2)  # one of the smoke config's 2 rounds
    rec = bp.run_one(spec, cfg, root, smoke=True, stop_after=None, deadline=None)
    assert rec["counters"]["fast_round"] == 2 and len(rec["segments"]) == 2
    assert rec["seconds"] == pytest.approx(sum(x["seconds"] for x in rec["segments"]), abs=0.2)
    assert rec["evals"][0]["fast_round"] == 0 and rec["evals"][-1]["fast_round"] == 2

def test_powered_run_held_by_another_process_is_skipped_not_driven_twice(tmp_path, capsys):
    """Two grid processes on one results file: a run another process holds (its lock beside the run directory)
    is skipped, not resumed under it; once released, the next invocation runs it."""
    import fcntl

    from benchmarks import bench_powered as bp

    out = tmp_path / "res"
    (out / "runs").mkdir(parents=True)
    args = ["--smoke", "--out", str(out), "--only", "math-gepa-s0"]
    with open(out / "runs" / "math-gepa-s0.lock", "w") as other:  # what the other process holds
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = bp.main(args)
        assert "skip math-gepa-s0: another process is running it" in capsys.readouterr().out
        assert res["runs"] == [] and not (out / "runs" / "math-gepa-s0").exists()
    res = bp.main(args)
    assert [r["name"] for r in res["runs"]] == ["math-gepa-s0"] and res["runs"][0]["counters"]["fast_round"] == 2


def test_powered_commit_keeps_the_files_newer_records_over_a_stale_copy(tmp_path):
    """A process commits with the records it read at its start: another process's newer record of the same run,
    written since, survives; the run this process finished replaces its own."""
    from benchmarks import bench_powered as bp
    from benchmarks.common import load_result

    def rec(name, seconds):
        return {"name": name, "task": "math", "mode": "gepa", "seed": 0, "variant": "default", "seconds": seconds,
                "evals": [{"samples": 0, "rl_step": 0, "reward": 0.5}], "counters": {}, "final": {}, "ablation": None}

    stale = bp.commit(tmp_path, {"runs": [rec("math-gepa-s0", 1.0)]})  # what a second process read at its start
    bp.commit(tmp_path, {"runs": []}, finished=rec("math-gepa-s0", 2.0))  # the first process re-records it
    bp.commit(tmp_path, stale, finished=rec("math-gepa-s1", 3.0))  # the second process finishes another run
    runs = {r["name"]: r["seconds"] for r in load_result(tmp_path, "powered")["runs"]}
    assert runs == {"math-gepa-s0": 2.0, "math-gepa-s1": 3.0}
    # A planned run whose process has not committed yet (it commits when it stops) but whose run directory
    # exists is in progress, not "not started"; a planned run without one is missing.
    root = tmp_path / "runs"
    (root / "math-rl-s0").mkdir(parents=True)
    res = bp.commit(tmp_path, {"runs": [], "grid": ["math-gepa-s0", "math-rl-s0", "math-rl-s1"]}, root=root)
    assert res["in_progress"] == ["math-rl-s0"]
    assert bp.grid_status(res)[1:] == (["math-rl-s0"], ["math-rl-s1"])


def test_powered_analysis_bands_and_reach():
    """The analysis on hand-made runs: band = mean and bootstrap range over seeds, reach of RL's final mean."""
    from benchmarks import bench_powered as bp

    def run(mode, seed, rewards, per_step=32, fast=0):
        evals = [{"samples": i * (per_step + fast), "rl_step": 0 if mode == "gepa" else i, "reward": r,
                  "kl": 0.01 * i} for i, r in enumerate(rewards)]
        return {"name": f"math-{mode}-s{seed}", "task": "math", "mode": mode, "seed": seed, "variant": "default",
                "evals": evals, "seconds": 10.0 + seed, "ablation": None, "counters": evals[-1], "final": {}}

    runs = [run("rl", 0, [0.2, 0.3, 0.4]), run("rl", 1, [0.2, 0.2, 0.6]),
            run("fst", 0, [0.2, 0.5, 0.5], fast=4), run("fst", 1, [0.2, 0.4, 0.3], fast=4)]
    a = bp.analyse({"runs": runs})["default/math"]
    assert a["target"]["reward"] == pytest.approx(0.5)  # mean of RL's final running max (0.4, 0.6)
    b = a["bands"]["fst"]["samples"]
    assert b["x"] == [0, 36, 72] and b["mean"] == pytest.approx([0.2, 0.45, 0.45])
    assert b["lo"][1] == pytest.approx(0.4) and b["hi"][1] == pytest.approx(0.5)
    reach = a["reach"]
    assert reach["fst"]["rl_step"]["per_seed"] == [1, None] and reach["rl"]["rl_step"]["per_seed"] == [None, 2]
    assert a["speedup_rl_step"]["n"] == 0  # no seed where both reached it: no ratio, rather than a made-up one
    cr = a["crossing"]["fst"]["samples"]  # mean curve over both seeds: 0.2, 0.45, 0.45 at 0, 36, 72 -> never 0.5
    assert cr["point"] is None and cr["n"] == 2 and 0 < cr["never"] < 1  # resampling seed 0 twice reaches it at 36
    assert cr["lo"] == 36 and cr["hi"] is None
    assert a["crossing"]["rl"]["rl_step"]["point"] == 2  # RL's mean (0.2, 0.25, 0.5) reaches its own final mean last
    fv = a["final_vs_rl"]["fst"]  # running max 0.5 vs 0.4 (seed 0), 0.4 vs 0.6 (seed 1)
    assert fv["per_seed"] == pytest.approx([0.1, -0.2]) and fv["diff"]["mean"] == pytest.approx(-0.05)
    assert fv["better"] == 1 and "gepa" not in a["final_vs_rl"]
    assert fv["last"]["per_seed"] == pytest.approx([0.1, -0.3])  # last evaluations 0.5 vs 0.4, 0.3 vs 0.6
    assert fv["mean_evals"]["per_seed"] == pytest.approx([0.15, -0.05])  # (0.5+0.5)/2 - 0.35, 0.35 - 0.4
    assert fv["mean_evals"]["diff"]["mean"] == pytest.approx(0.05)
    text = bp.markdown({"runs": runs, "analysis": {"default/math": a}, "grid": [r["name"] for r in runs]})
    assert "4 of 4 runs finished" in text and "Missing" not in text
    origins = bp.analyse({"runs": [{**r, "harness_origins": {"seed": 1, "bootstrap": r["seed"] + 1}}
                                   for r in runs]})["default/math"]["harness_origins"]
    assert origins == {"fst": {"bootstrap": 3, "seed": 2}}  # summed over seeds; RL-only holds only its seed
    gemma = {**run("fst", 1, [0.2, 0.7, 0.5], fast=4), "variant": "gemma_reflector"}  # seed 1 only
    an = bp.analyse({"runs": runs + [gemma]})
    assert "vs_default" not in an["default/math"]
    vd = an["gemma_reflector/math"]["vs_default"]  # running max 0.7 vs the default's 0.4 on seed 1
    assert list(vd) == ["fst"] and vd["fst"]["seeds"] == [1] and vd["fst"]["per_seed"] == pytest.approx([0.3])
    assert "s1: +0.300" in bp.markdown({"runs": runs + [gemma], "analysis": an})
    hover_rl = {**run("rl", 0, [0.2, 0.3]), "task": "hover", "name": "hover-rl-s0"}
    keys = set(bp.analyse({"runs": runs + [gemma, hover_rl]}))
    assert keys == {"default/math", "default/hover", "gemma_reflector/math"}  # no variant entry of RL-only alone



def test_powered_reflection_outcomes_classify_every_reflective_proposal(tmp_path):
    """Each reflective proposal of a run's fast rounds counts once, by what became of it (bootstraps don't count).
    An unclosed fence logged before the finish reason was recorded is told apart by the round's completion tokens
    against the run's ``reflection_max_tokens`` where they decide it. The analysis sums per mode over seeds."""
    from benchmarks import bench_powered as bp

    def write_round(run, k, log, calls=1, tokens=10):
        d = tmp_path / run / "fast" / f"round_{k:04d}"
        d.mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("fast:\n  reflection_max_tokens: 128\n")
        (d / "fst_fast_result.json").write_text(json.dumps(
            {"round": k, "proposal_log": log, "reflection": {"calls": calls, "completion_tokens": tokens}}))

    old = {"operator": "reflect", "status": "invalid",
           "detail": "task_template: truncated reply: the fenced block is never closed (reply starts: '```')"}
    write_round("math-fst-s0", 1, [old, {"operator": "bootstrap", "status": "accepted", "detail": ""}], tokens=2)
    write_round("math-fst-s0", 2, [old], tokens=128)
    write_round("math-fst-s0", 3, [old, {"operator": "reflect", "status": "noop", "detail": "no change"}],
                calls=2, tokens=130)  # 128 + 2: which one hit the limit can't be told
    write_round("math-fst-s0", 4, [{"operator": "reflect", "status": "invalid", "detail":
                                    "<gepa candidate>, field 'task_template': missing placeholder {question}"},
                                   {"operator": "reflect", "status": "rejected", "detail": "reflect: system_prompt"}],
                calls=2)
    write_round("math-fst-s1", 1, [{"operator": "reflect", "status": "invalid",
                                    "detail": "system_prompt: no fenced ``` block in the reply (reply starts: 'I')"},
                                   {"operator": "reflect", "status": "accepted", "detail": "reflect: system_prompt"},
                                   {"operator": "reflect", "status": "failed", "detail": "empty reply"}], calls=3)
    write_round("math-fst-s1", 2, [{"operator": "reflect", "status": "invalid", "detail":
                                    "few_shot: cut off at the token limit: the fenced block is never closed (...)"},
                                   {"operator": "reflect", "status": "invalid", "detail":
                                    "few_shot: the reply ended inside its fenced block (never closed) (...)"}], calls=2)
    write_round("math-fst-s1", 3, [{"operator": "reflect", "status": "accepted", "detail": ""}] * 4)
    (tmp_path / "math-fst-s1" / "fast" / "round_0003").rename(tmp_path / "math-fst-s1" / "fast" / "round_0002.stale-1")
    (tmp_path / "math-rl-s0").mkdir()
    (tmp_path / "math-rl-s0" / "config.yaml").write_text("mode: rl\n")
    o0, o1 = bp.reflection_outcomes(tmp_path / "math-fst-s0"), bp.reflection_outcomes(tmp_path / "math-fst-s1")
    assert o0 == {"broken harness": 1, "cut off at the token limit": 1, "no change": 1, "rejected (minibatch)": 1,
                  "reply ended inside its fence": 1, "unclosed fence (cause unknown)": 1}
    assert o1 == {"LM call failed": 1, "accepted": 1, "cut off at the token limit": 1, "no fenced block": 1,
                  "reply ended inside its fence": 1}
    assert bp.reflection_outcomes(tmp_path / "math-rl-s0") == {}

    def rec(mode, seed, outcomes):
        evals = [{"samples": 0, "rl_step": 0, "reward": 0.2, "kl": 0.0}, {"samples": 32, "rl_step": 1, "reward": 0.4,
                                                                          "kl": 0.01}]
        return {"name": f"math-{mode}-s{seed}", "task": "math", "mode": mode, "seed": seed, "variant": "default",
                "evals": evals, "seconds": 1.0, "ablation": None, "counters": evals[-1], "final": {},
                "reflection_outcomes": outcomes}

    runs = [rec("fst", 0, o0), rec("fst", 1, o1), rec("rl", 0, {})]
    an = bp.analyse({"runs": runs})
    summed = an["default/math"]["reflection_outcomes"]
    assert list(summed) == ["fst"] and summed["fst"]["cut off at the token limit"] == 2
    assert sum(summed["fst"].values()) == 11 and summed["fst"]["accepted"] == 1
    text = bp.markdown({"runs": runs, "analysis": an})
    assert "What became of the reflective proposals" in text and "unclosed fence (cause unknown)" in text


def test_reflection_probe_smoke_and_pairing(tmp_path):
    """The probe asks for one proposal per component and cap through the adapter (smoke: tiny model); the summary
    follows each reply cut off at the smallest cap to what the same prompt gave at the larger one."""
    from benchmarks import bench_reflection as br

    import logging

    before = logging.getLogger("fst_lab").level
    res = _smoke("reflection", tmp_path)
    assert logging.getLogger("fst_lab").level == before  # the probe's quiet loggers are given back
    comps = res["settings"]["components"]
    assert comps == ["system_prompt", "task_template", "few_shot"]
    assert sorted((r["component"], r["cap"]) for r in res["rows"]) == sorted((c, k) for c in comps for k in (8, 16))
    assert all(r["reply_tokens"] <= r["cap"] for r in res["rows"])
    assert sum(res["by_cap"]["8"].values()) == 3

    def row(rep, comp, cap, outcome):
        return {"rep": rep, "component": comp, "cap": cap, "outcome": outcome, "reply_tokens": cap, "seconds": 1.0}

    cut = "cut off at the token limit"
    hand = {"settings": {**res["settings"], "caps": [128, 512]}, "command": "x", "model": "m",
            "rows": [row(0, "system_prompt", 128, cut), row(0, "system_prompt", 512, br.VALID),
                     row(0, "few_shot", 128, cut), row(0, "few_shot", 512, cut),
                     row(1, "system_prompt", 128, "no fenced block"), row(1, "system_prompt", 512, "no fenced block")]}
    br.summarise(hand)
    assert hand["by_cap"] == {"128": {cut: 2, "no fenced block": 1}, "512": {cut: 1, "no fenced block": 1,
                                                                          br.VALID: 1}}
    assert hand["cut_at_smallest"] == {"512": {cut: 1, br.VALID: 1}}
    assert "Of the 2 replies cut off at 128 tokens, at 512 tokens: " in br.markdown(hand)


def test_powered_cost_is_measured_per_task_and_left_runs_are_priced(tmp_path):
    """Cost from hand-made run directories: eval seconds per rollout only within one process (a resumed
    process's first eval is not timed across the gap), an unmeasured task scaled from math by the eval ratio,
    the unfinished runs priced by how far their directories got, one continue command per (task, variant)."""
    from benchmarks import bench_powered as bp

    def write(name, recs):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"mode: {name.split('-')[1]}\ncycles: 5\nsteps_per_cycle: 6\n")
        (d / "events.jsonl").write_text("")
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    def rec(kind, t, ts, **kw):  # t: seconds since its process started; ts: seconds since 10:00 (wall clock)
        stamp = datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=ts)
        return {"kind": kind, "time": t, "ts": stamp.isoformat(), **kw}

    write("math-rl-s0", [rec("eval", 30, 0, n=64, k=1, rl_step=0),                   # first record: not timed
                         rec("slow", 90, 60, step_seconds=60.0, rl_step=1),
                         rec("eval", 122, 92, n=64, k=1, rl_step=1),                  # 32 s / 64 = 0.5 s
                         rec("slow", 50, 600, step_seconds=40.0, rl_step=2),          # resumed: a new process
                         rec("eval", 60, 610, n=64, k=1, rl_step=2)])                 # 10 s / 64
    write("math-gepa-s0", [rec("fast", 20, 0, seconds=20.0, rollouts=30, fast_round=1)])
    write("hover-rl-s0", [rec("slow", 200, 0, step_seconds=200.0, rl_step=1),
                          rec("eval", 264, 64, n=64, k=1, rl_step=1),                 # 1.0 s per rollout
                          rec("slow", 600, 3000, step_seconds=220.0, rl_step=3),
                          rec("eval", 650, 3600, n=64, k=1, rl_step=3)])              # ts says 600 s: skipped
    c = bp.measured_costs(tmp_path)
    assert c["math"]["step"] == (50.0, 2) and c["math"]["round"] == (20.0, 1)
    assert c["math"]["eval"][0] == pytest.approx((0.5 + 10 / 64) / 2) and c["math"]["eval"][1] == 2
    assert c["hover"]["eval"] == (1.0, 1) and c["hover"]["round"] is None
    hours, notes = bp.run_hours(c, "hover")
    scale = 1.0 / c["math"]["eval"][0]
    assert notes == [f"round = math's x {scale:.1f}"]
    assert hours["gepa"] == pytest.approx((5 * 20.0 * scale + 6 * 64 * 1.0) / 3600)
    assert hours["rl"] == pytest.approx((30 * 210.0 + 6 * 64 * 1.0) / 3600)
    assert bp.run_progress(tmp_path, "hover-rl-s0") == pytest.approx(3 / 30)
    assert bp.run_progress(tmp_path, "math-gepa-s0") == pytest.approx(1 / 5)
    res = {"grid": ["math-rl-s0", "hover-rl-s0", "hover-fst-s0", "math-fst-s0-gemma_reflector"], "runs": [
        {"name": "math-rl-s0"}]}
    text = bp.measured_estimate(tmp_path, res)
    left = hours["rl"] * 0.9 + hours["fst"] + bp.run_hours(c, "math")[0]["fst"]
    assert f"Left: 3 runs ≈ {left:.0f} h" in text and "hover-rl-s0 10% done" in text
    one = bp.measured_estimate(tmp_path, {**res, "grid": ["math-rl-s0", "hover-fst-s0"]})
    assert "Left: 1 run ≈" in one and "1 runs" not in one
    small = bp.measured_estimate(tmp_path, {**res, "grid": ["math-rl-s0", "math-gepa-s0"]})
    minutes = bp.run_hours(c, "math")[0]["gepa"] * 0.8 * 60  # under an hour left: priced in minutes, not "0 h"
    assert f"Left: 1 run ≈ {max(minutes, 1):.0f} min**" in small and "math-gepa-s0 20% done" in small
    cmds = bp.continue_commands(["hover-rl-s0", "hover-fst-s0", "math-gepa-s1-gemma_reflector",
                                 "math-fst-s0-gemma_reflector"])
    assert len(cmds) == 2  # one process per (task, variant) with the modes it lacks, run one after another
    assert "--threads 2 --tasks hover --modes rl,fst --deadline 150 > runs/powered-hover.log" in cmds[0]
    assert "--modes fst,gepa --variant gemma_reflector --deadline 150 > runs/powered-math-gemma_reflector.log" in cmds[1]

    # The timings are kept in the results file: once the run directories are gone (a fresh machine), the cost
    # still comes from them, and a run whose directory is gone is missing again, not in progress.
    out = tmp_path / "results"
    grid = res["grid"] + ["math-gepa-s0"]
    committed = bp.commit(out, {"runs": [], "grid": grid}, root=tmp_path)
    assert committed["in_progress"] == ["hover-rl-s0", "math-gepa-s0", "math-rl-s0"]
    assert committed["costs"]["hover-rl-s0"]["step"] == [200.0, 220.0]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert bp.measured_costs(fresh, committed["costs"]) == c
    again = bp.commit(out, {"runs": []}, root=fresh)
    assert again["in_progress"] == [] and again["costs"] == committed["costs"]
    assert bp.grid_status(again)[2] == grid

@pytest.mark.slow
def test_learning_smoke_records_each_variant_and_skips_finished(tmp_path):
    """The learning check at smoke size: one run per (variant, seed) with its final reward, probe KL and the
    minimal-harness reward; the variants differ only in their overrides; a second call adds nothing."""
    from benchmarks import bench_learning as bl

    res = bl.main(["--smoke", "--out", str(tmp_path), "--variants", "fp32,bf16", "--seeds", "0"])
    runs = {r["variant"]: r for r in res["runs"]}
    assert set(runs) == {"fp32", "bf16"}
    assert runs["fp32"]["config"]["slow"]["precision"] == "fp32" and runs["bf16"]["config"]["slow"]["precision"] == "bf16"
    strip = lambda c: {**c, "slow": {k: v for k, v in c["slow"].items() if k != "precision"}, "run_name": None}  # noqa: E731
    assert strip(runs["fp32"]["config"]) == strip(runs["bf16"]["config"])
    for r in runs.values():
        assert r["counters"]["rl_step"] == 1 and r["evals"] and "minimal" in r["minimal"]
        assert r["final"]["kl"] is not None and r["seconds"] > 0
    again = bl.main(["--smoke", "--out", str(tmp_path), "--variants", "fp32,bf16", "--seeds", "0"])
    assert len(again["runs"]) == 2
    summary = bl.summary(again)
    assert summary["fp32"]["seeds"] == [0] and "| fp32 | 0 |" in bl.markdown(again)


def test_memory_smoke_measures_each_micro_batch_in_its_own_process(tmp_path):
    """Each (precision, micro-batch) row comes from a fresh process: its peak is at least what the loaded model
    held, the step added something, and the table names every row."""
    from benchmarks import bench_memory as bm

    res = _smoke("memory", tmp_path)
    assert [(r["precision"], r["micro"]) for r in res["rows"]] == [(p, m) for p in bm.PRECISIONS for m in bm.MICRO[:2]]
    for r in res["rows"]:
        assert r["peak_mb"] >= r["loaded_mb"] > 0 and r["added_mb"] >= 0 and r["tokens_per_s"] > 0
    assert bm.markdown(res).count("| fp32 |") == 2


def test_hover_headroom_smoke_scores_both_harnesses_per_gold_label(tmp_path):
    """The probe evaluates the seed harness and the hand-written comparison harness on the same claims and
    splits the accuracy by gold label (balanced: a one-label policy shows as 1.0 / 0.0)."""
    from benchmarks import bench_hover_headroom as bh

    res = _smoke("hover_headroom", tmp_path)
    assert [(r["harness"], r["temperature"]) for r in res["rows"]] == [
        ("hover", 0.0), ("hover-compare", 0.0), ("hover", bh.RL_TEMPERATURE), ("hover", bh.LOWER_TEMPERATURE)]
    for r in res["rows"]:
        assert set(r["accuracy_by_gold"]) == {"SUPPORTED", "NOT_SUPPORTED"} and r["constant_floor"] == 0.5
        assert r["reward"] == pytest.approx(sum(r["accuracy_by_gold"].values()) / 2)  # 2 + 2 claims
        # claims without an answer are split into cut off at the cap and finished without one
        assert r["unparsed_cut_off"] + r["unparsed_finished"] == pytest.approx(r["answer_unparsed"])
    seed = __import__("yaml").safe_load((Path(__file__).resolve().parent.parent / "harnesses" / "hover.yaml").read_text())
    cmp = bh.compare_harness(seed)
    assert cmp["tools"] == seed["tools"] and len(cmp["few_shot"]) == 4 and "side by side" in cmp["system_prompt"]
    assert "| hover-compare |" in bh.markdown(res) and "| T=1 (as RL) |" in bh.markdown(res)
