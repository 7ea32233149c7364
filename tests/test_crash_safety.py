"""Crash safety: a running session is SIGKILLed at 20+ points and every time the run directory loads,
resumes, and loses no completed step or population.

One run directory lives through all the kills. A fork server (tests/scripts/crash_worker.py) holds the
heavy imports; each command forks a child that creates or resumes the tiny session (tiny random
Llama, K=2, G=2, one prompt per step, 4 new tokens, a small GEPA budget) and runs it. The child dies
by SIGKILL either at an *instrumented* point — inside a fast step's GEPA loop, inside a TRL step, in
the middle of a checkpoint, between a metrics line and the state file, on a torn JSONL line — or
after a seeded random delay sent by this test. After every kill (and after the resume that follows):

- ``fst_lab.runs.load_run`` reads the directory, and ``Session.resume`` continues it;
- the counters in ``state.json`` never go backwards;
- every slow step up to ``state.rl_step`` is in ``metrics.jsonl`` exactly once (likewise fast rounds);
- every harness id of the state's population exists in ``harnesses/all`` and loads;
- the checkpoint the state points at exists and is complete; a population snapshot exists for
  every completed cycle.

Run alone: ``pytest tests/test_crash_safety.py -m slow -s`` (prints kills tried / resumes clean).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fst_lab.harness import Harness
from fst_lab.runs import load_run, read_jsonl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "scripts"))
from fault_server import FaultServer  # noqa: E402

WORKER = REPO / "tests" / "scripts" / "crash_worker.py"
SEED = int(os.environ.get("FST_CRASH_SEED", "20261122"))

CONFIG = dict(task="crash-keyword", harness="math", mode="fst", cycles=1000, steps_per_cycle=2, population_size=2,
              num_generations=2, prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=4,
              save_rollouts=1, seed=0, checkpoint_every=1,
              fast={"max_metric_calls": 8, "reflection_minibatch_size": 1, "max_new_tokens": 4,
                    "reflection_lm": "openai/x", "api_key_env": "FST_CRASH_KEY", "reflection_retries": 0,
                    "reflection_timeout": 30.0, "bootstrap_every": 2},
              slow={"learning_rate": 1e-3, "kl_probe_size": 0, "warmup_steps": 0})

# Where the child kills itself: "<target>:<enter|exit|torn>:<n-th call in that child>".
CRASH_POINTS = [
    "fst_lab.rundir.atomic_write_text:enter:1",                 # creating the run: before config.yaml
    "fst_lab.session.Session._save_state:enter:1",             # creating the run: before state.json
    "fst_lab.fast.HarnessAdapter.propose_new_texts:enter:1",    # inside fast_step's GEPA loop
    "fst_lab.lm.ReflectionLM.__call__:exit:1",                  # GEPA loop, right after a reflection
    "gepa.core.state.GEPAState.save:exit:1",                    # GEPA wrote its pickled state
    "fst_lab.session.Session._record:exit:1",                   # fast round in metrics, state not yet
    "fst_lab.slow.SlowLearner._rollout:enter:1",                # inside a TRL step (trainer thread)
    "fst_lab.slow.SlowLearner._on_step_logged:enter:1",         # optimizer stepped, not yet recorded
    "fst_lab.session.Session._checkpoint:enter:1",              # RL step done, checkpoint not begun
    "torch.save:exit:1",                                        # mid-checkpoint: optimizer written
    "fst_lab.slow.atomic_write_text:enter:1",                   # mid-checkpoint: before fst_state.json
    "fst_lab.session.Session._checkpoint:exit:1",               # checkpoint + state.json just written
    "fst_lab.rundir.append_jsonl:torn:2",                       # half a metrics/events line, then death
    "os.replace:enter:7",                                       # an atomic write: temp file, no rename
    "fst_lab.harness.Harness.save:enter:1",                     # storing a new (GEPA) harness
    "fst_lab.session.Session.evaluate:enter:1",                 # end of cycle: evaluation
    "fst_lab.rundir.RunDir.write_population:enter:1",           # end of cycle: population snapshot
    "fst_lab.session.Session._save_state:exit:3",               # right after a state write
    "fst_lab.slow.SlowLearner.load_state:exit:1",               # right after resuming the weights
]
N_RANDOM = int(os.environ.get("FST_CRASH_RANDOM", "6"))         # + seeded random-delay kills


class ForkServer:
    def __init__(self, log: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "FST_CRASH_KEY": "sk-test"}
        self.err = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, env=env, cwd=str(REPO), text=True, bufsize=1)
        ready = self._read()
        assert ready["event"] == "ready", ready

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died (rc={self.proc.poll()}); see {self.err.name}")
        return json.loads(line)

    def run(self, cmd: dict, *, kill_after: float | None = None, timeout: float = 300) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        started = self._read()
        assert started["event"] == "started"
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(started["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        t0 = time.time()
        out = self._read()
        assert out["event"] == "exited" and time.time() - t0 < timeout
        return out

    def close(self) -> dict:
        """Stop the server; returns its CPU seconds (server and all children)."""
        bye = {}
        try:
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            bye = json.loads(line) if line else {}
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.err.close()
        return bye


# ---------------------------------------------------------------------------- invariants
def _counters(run_dir: Path) -> dict | None:
    p = run_dir / "state.json"
    return json.loads(p.read_text())["counters"] if p.exists() else None


def _monotone(prev: dict | None, cur: dict | None) -> list[str]:
    if prev is None:
        return []
    if cur is None:
        return ["state.json disappeared"]
    bad = [k for k in ("rl_step", "fast_round", "samples_rl", "samples_fast", "cycle", "evals", "stage")
           if cur.get(k, 0) < prev.get(k, 0)]
    if (cur["cycle"], cur["plan_pos"]) < (prev["cycle"], prev["plan_pos"]):
        bad.append("cycle/plan_pos")
    return bad


def check_run_dir(run_dir: Path, *, resumed: bool) -> list[str]:
    """Everything that must hold after a kill (and, with ``resumed``, after the resume that followed)."""
    if not (run_dir / "config.yaml").exists():
        return []  # killed before the run existed: nothing to lose yet
    problems = []
    run = load_run(run_dir)  # pure loader: JSON / JSONL / YAML only
    state = run.state
    if not state:
        return ["config.yaml without state.json"]
    c = state["counters"]
    for hid in state["population"]:
        p = run_dir / "harnesses" / "all" / f"{hid}.yaml"
        if not p.exists():
            problems.append(f"population member {hid} missing from harnesses/all")
        elif Harness.load(p).id != hid:
            problems.append(f"harnesses/all/{hid}.yaml holds another harness")
    if state.get("checkpoint"):
        ck = run_dir / "checkpoints" / state["checkpoint"]
        if not (ck / "fst_state.json").exists():
            problems.append(f"state points at an incomplete checkpoint {state['checkpoint']}")
        elif int(state["checkpoint"].split("_")[1]) != c["rl_step"]:
            problems.append(f"checkpoint {state['checkpoint']} is not rl_step {c['rl_step']}")
    elif c["rl_step"]:
        problems.append(f"rl_step {c['rl_step']} but no checkpoint")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    slow = [m["rl_step"] for m in metrics if m.get("kind") == "slow" and m["rl_step"] <= c["rl_step"]]
    fast = [m["round"] for m in metrics if m.get("kind") == "fast" and m["round"] <= c["fast_round"]]
    if sorted(slow) != list(range(1, c["rl_step"] + 1)):
        problems.append(f"slow steps in metrics {sorted(slow)} != 1..{c['rl_step']}")
    if sorted(fast) != list(range(1, c["fast_round"] + 1)):
        problems.append(f"fast rounds in metrics {sorted(fast)} != 1..{c['fast_round']}")
    if resumed:  # the resume dropped records of work that the state doesn't count
        beyond = [m for m in metrics if (m.get("kind") == "slow" and m["rl_step"] > c["rl_step"])
                  or (m.get("kind") == "fast" and m["round"] > c["fast_round"])]
        if beyond:
            problems.append(f"{len(beyond)} uncounted record(s) survived the resume")
    snaps = set(run.cycles())
    missing = [k for k in range(1, c["cycle"] + 1) if k not in snaps]
    if missing:
        problems.append(f"population snapshots missing for completed cycles {missing}")
    return problems


# ---------------------------------------------------------------------------- the test
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_at_many_points_never_loses_work(tmp_path):
    rng = random.Random(SEED)
    run_dir = tmp_path / "crash"
    # The reflection LM: a local OpenAI-compatible server whose every reply adds a BANANA, which the
    # worker's "crash-keyword" task rewards, so GEPA keeps accepting proposals and the population changes.
    reflector = FaultServer(default="banana").start()
    config = json.loads(json.dumps(CONFIG))
    config["fast"]["api_base"] = reflector.api_base
    server = ForkServer(tmp_path / "server.log")
    plan = [("point", p) for p in CRASH_POINTS]
    # random-delay kills spread over the plan (after the run exists, so they land in real work)
    for _ in range(N_RANDOM):
        plan.insert(rng.randint(3, len(plan)), ("random", round(rng.uniform(1.0, 8.0), 2)))
    tally = {"kills": 0, "clean": 0, "no_kill": 0}
    failures: list[str] = []
    prev = None
    t_start = time.time()
    try:
        for kind, what in plan:
            cmd = {"run_dir": str(run_dir), "config": config, "cycles": 2}
            if kind == "point":
                cmd["crash_at"] = what
            out = server.run(cmd, kill_after=what if kind == "random" else None)
            label = f"{kind} {what}"
            if out["signal"] == signal.SIGKILL:
                tally["kills"] += 1
            elif out["code"] == 0:
                tally["no_kill"] += 1  # finished before the kill point was reached: still checked
            else:
                failures.append(f"{label}: worker failed (code {out['code']}); see {run_dir}.log")
                break
            cur = _counters(run_dir)
            problems = _monotone(prev, cur) + check_run_dir(run_dir, resumed=False)
            # the next child resumes first; a clean resume is checked on the state it leaves behind
            if problems:
                failures.append(f"{label}: {problems}")
            prev = cur if cur is not None else prev
        # a last uninterrupted run: resumes, finishes two cycles, and everything adds up
        before = _counters(run_dir)
        out = server.run({"run_dir": str(run_dir), "config": config, "cycles": 2})
        assert out["code"] == 0, f"final run failed; see {run_dir}.log"
        after = _counters(run_dir)
        problems = _monotone(before, after) + check_run_dir(run_dir, resumed=True)
        assert after["cycle"] >= before["cycle"] + 2 if before else after["cycle"] >= 2
        if problems:
            failures.append(f"final: {problems}")
    finally:
        cpu = server.close()
        reflector.close()
    notes = read_jsonl(f"{run_dir}.worker.jsonl")
    resumes = sum(n["event"] == "resumed" for n in notes)
    tally["clean"] = resumes - sum(1 for f in failures if "final" not in f)
    elapsed = time.time() - t_start
    load = os.getloadavg()[0]
    print(f"\n[crash safety] kills tried: {tally['kills']} (+{tally['no_kill']} finished first), "
          f"resumes: {resumes}, resumes clean: {tally['clean']}, {elapsed:.0f}s wall (load avg {load:.1f}), "
          f"CPU {cpu.get('cpu_server', 0) + cpu.get('cpu_children', 0):.0f}s, final counters {_counters(run_dir)}")
    pops = {tuple(e["population"]) for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "fast"}
    print(f"[crash safety] distinct populations across fast rounds: {len(pops)}")
    assert not failures, "\n".join(failures)
    assert tally["kills"] >= 20
    events = [e["event"] for e in load_run(run_dir).events]
    assert events.count("resume") >= resumes  # (a kill can land between resume()'s event and its return)


def test_a_torn_jsonl_line_never_swallows_the_next_record(tmp_path):
    """SIGKILL mid-append leaves half a line without its newline; the next append must start a new line
    (otherwise the record written after the resume is glued to the fragment and lost to every reader)."""
    from fst_lab.rundir import append_jsonl

    p = tmp_path / "metrics.jsonl"
    append_jsonl(p, {"kind": "slow", "rl_step": 1})
    with open(p, "a", encoding="utf-8") as f:
        f.write('{"kind": "slow", "rl_st')  # what a kill during the write of step 2 leaves
    append_jsonl(p, {"kind": "slow", "rl_step": 2})  # step 2, redone after the resume
    append_jsonl(p, {"kind": "slow", "rl_step": 3})
    assert [r["rl_step"] for r in read_jsonl(p)] == [1, 2, 3]


def test_a_torn_line_cut_mid_character_is_skipped_quietly_and_a_bad_hand_edit_is_named(tmp_path, caplog):
    """A kill can land anywhere in a record's bytes, inside a multi-byte character too: the file stays readable and
    the fragment is skipped without a word, at every cut. A line that is no prefix of JSON (a hand edit gone wrong)
    is skipped with one warning naming the file and line, not one per read (the dashboard re-reads)."""
    from fst_lab.rundir import append_jsonl

    rec = {"kind": "edit", "text": 'Answer "é→中" or 😀 \\ ok', "score": -1.5e-3, "ok": True, "none": None, "l": [1]}
    whole = json.dumps(rec, ensure_ascii=False).encode()
    p = tmp_path / "events.jsonl"
    with caplog.at_level(logging.WARNING, logger="fst_lab.runs"):
        for cut in range(1, len(whole)):
            p.write_bytes(b"")
            append_jsonl(p, {"kind": "start"})
            with open(p, "ab") as f:
                f.write(whole[:cut])
            append_jsonl(p, rec)  # the record, written again after the resume
            assert read_jsonl(p) == [{"kind": "start"}, rec], cut
        assert caplog.records == []

        with open(p, "a", encoding="utf-8") as f:
            f.write('{"kind": "edit", "score": 0.5x}\n[1, 2]\n')
        append_jsonl(p, {"kind": "stop"})
        assert read_jsonl(p) == [{"kind": "start"}, rec, {"kind": "stop"}]
        assert read_jsonl(p)[-1] == {"kind": "stop"}
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"{p}:4: skipped a line that is not JSON (Expecting ',' delimiter, column 30)",
                    f"{p}:5: skipped a line that is a JSON list, not an object"]
