"""Session: modes, schedule, resume, hand edits, stages — on a tiny random model."""

from __future__ import annotations

import collections
import json

import pytest
import yaml

from fst_lab.config import FSTConfig
from fst_lab.models import tiny_policy
from fst_lab.runs import load_run
from fst_lab.session import Session, SessionError
from fst_lab.tasks.base import answer_key


def tiny_config(tmp_path, **kw) -> FSTConfig:
    base = dict(task="math", cycles=2, steps_per_cycle=1, population_size=2, num_generations=2, prompts_per_step=1,
                fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=6, fast={"budget_passes": 1},
                slow={"learning_rate": 1e-3}, runs_root=str(tmp_path), run_name="r", seed=0, save_rollouts=2)
    base.update(kw)
    return FSTConfig(**base)


@pytest.mark.parametrize("mode", ["fst", "rl", "gepa"])
def test_two_cycles_in_each_mode(tmp_path, mode):
    s = Session(tiny_config(tmp_path, mode=mode), policy=tiny_policy(seed=0), progress=False)
    st = s.run()
    assert st["cycle"] == 2
    run = load_run(s.run_dir)
    kinds = [m["kind"] for m in run.metrics]
    if mode == "fst":
        assert kinds.count("fast") == 2 and kinds.count("slow") == 2
        assert st["samples_fast"] > 0 and st["samples_rl"] == 2 * 2  # 2 steps x 1 problem x G=2
    elif mode == "rl":
        assert "fast" not in kinds and kinds.count("slow") == 2
        assert st["population"] == [s.seed_harness.id]
    else:
        assert "slow" not in kinds and kinds.count("fast") == 2 and st["samples_rl"] == 0
    assert kinds.count("eval") == 2
    assert run.cycles() == [1, 2]
    # every record of the run dir is counted the same way across modes
    last = run.metrics[-1]
    assert last["samples"] == last["samples_rl"] + last["samples_fast"]
    assert (s.run_dir / "harnesses" / "current").is_dir()


def test_a_missing_model_is_refused_before_the_run_directory_exists(tmp_path):
    from fst_lab.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no/such/model"):
        Session(tiny_config(tmp_path / "runs", model=str(tmp_path / "no/such/model")), progress=False)
    assert not (tmp_path / "runs").exists()


def test_mode_guards(tmp_path):
    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(), progress=False)
    with pytest.raises(SessionError, match="rl"):
        s.fast_step()
    g = Session(tiny_config(tmp_path, mode="gepa", run_name="g"), policy=tiny_policy(), progress=False)
    with pytest.raises(SessionError, match="gepa"):
        g.slow_step()


def test_resume_after_stop_matches_uninterrupted(tmp_path):
    """Stop after cycle 1, resume: same counters, and the next fast step yields the same population
    as in an uninterrupted run (fixed seeds)."""
    cfg = dict(cycles=2, eval_every_cycle=False)
    a = Session(tiny_config(tmp_path, run_name="a", **cfg), policy=tiny_policy(seed=0), progress=False)
    a.run(cycles=1)
    a.fast_step()
    pop_uninterrupted = [h.id for h in a.population]

    b = Session(tiny_config(tmp_path, run_name="b", **cfg), policy=tiny_policy(seed=0), progress=False)
    b.run(cycles=1)
    counters = dict(b.counters)
    pop_at_stop = [h.id for h in b.population]
    (b.run_dir / "stop").write_text("")
    b.run(cycles=1)  # stops at once: nothing more done
    assert b.counters == counters
    del b
    r = Session.resume(tmp_path / "b", policy=tiny_policy(seed=0), progress=False)
    assert r.counters == counters
    assert r.checkpoint is not None
    assert [h.id for h in r.population] == pop_at_stop
    r.fast_step()
    assert [h.id for h in r.population] == pop_uninterrupted
    events = [e["event"] for e in load_run(r.run_dir).events]
    assert "stop" in events and "resume" in events


def test_resume_between_checkpoints_rolls_back_to_the_weights_on_disk(tmp_path):
    """checkpoint_every=2 and the run ends after step 3: the weights on disk are step 2's, so resume goes
    back to step 2's counters (step 3's record is dropped and the step redone), never mixing them."""
    import torch

    cfg = tiny_config(tmp_path, mode="rl", cycles=3, steps_per_cycle=1, checkpoint_every=2, eval_every_cycle=False)
    a = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    a.slow_step(2)
    at_two = {k: v.detach().clone() for k, v in a.policy.model.named_parameters() if v.requires_grad}
    counters_two = dict(a.counters)
    with torch.no_grad():  # the tiny model's rewards are all 0 (no gradient): make "after step 2" visible
        for v in a.policy.model.parameters():
            if v.requires_grad:
                v.add_(0.01)
    a.slow_step(1)
    assert a.counters["rl_step"] == 3 and a.checkpoint == "step_000002"
    a.close()
    del a  # "crash": nothing after step 3 is written

    r = Session.resume(tmp_path / "r", policy=tiny_policy(seed=0), progress=False)
    assert r.counters == counters_two
    assert r.learner.global_step == 2
    loaded = {k: v.detach() for k, v in r.policy.model.named_parameters() if v.requires_grad}
    assert all(torch.equal(loaded[k], at_two[k]) for k in at_two)
    run = load_run(r.run_dir)
    assert [m["rl_step"] for m in run.metrics if m["kind"] == "slow"] == [1, 2]
    assert run.events[-1]["event"] == "resume" and run.events[-1]["rolled_back_steps"] == 1
    r.slow_step(1)
    assert r.counters["rl_step"] == 3 and r.learner.global_step == 3
    r.close()


def test_manual_edit_in_lineage_and_next_step(tmp_path):
    s = Session(tiny_config(tmp_path), policy=tiny_policy(), progress=False)
    s.slow_step(1)
    old = s.population[0]
    new = s.edit_harness(0, {"system_prompt": "Be terse. End with 'Answer: <n>'.\n"}, note="test edit")
    assert new.lineage.origin == "manual" and new.lineage.parents == (old.id,)
    assert s.population[0] is new
    lin = {x["id"]: x for x in s.lineage()}
    assert lin[new.id]["origin"] == "manual" and lin[new.id]["in_population"]
    ev = [e for e in load_run(s.run_dir).events if e["event"] == "edit"][-1]
    assert "+  Be terse." in ev["diff"] and ev["parent"] == old.id
    rec = s.slow_step(1)[0]
    assert new.id in rec["population"]  # the very next step trains on the edited harness
    trajs = s.learner.last_trajectories
    if trajs:
        assert {t.harness_id for t in trajs} == {new.id}
    # survives resume
    r = Session.resume(s.run_dir, policy=tiny_policy(), progress=False)
    assert r.population[0].id == new.id and r.harnesses[new.id].lineage.origin == "manual"


def test_hand_edit_of_yaml_file_is_picked_up(tmp_path):
    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(), progress=False)
    f = next((s.run_dir / "harnesses" / "current").glob("0_*.yaml"))
    data = yaml.safe_load(f.read_text())
    data["system_prompt"] = "Edited by hand.\n"
    f.write_text(yaml.safe_dump(data))
    before = f.read_text()
    s.slow_step(1)
    assert s.population[0].system_prompt == "Edited by hand.\n"
    assert s.population[0].lineage.origin == "manual"
    # an invalid hand edit is reported and ignored; the run goes on
    f = next((s.run_dir / "harnesses" / "current").glob("0_*.yaml"))
    f.write_text("system_prompt: [unclosed\n")
    s.slow_step(1)
    ev = [e for e in load_run(s.run_dir).events if e["event"] == "edit_rejected"]
    assert ev and "invalid YAML" in ev[-1]["error"]
    assert s.population[0].system_prompt == "Edited by hand.\n"
    assert before  # noqa




def test_a_harness_declaring_a_tool_the_task_lacks_is_flagged(tmp_path, caplog):
    """A declared tool the task does not implement answers every call with an error observation: a warning names
    it for the seed harness and for every edit (API or hand edit of the YAML file). It stays a warning, because a
    task-agnostic harness carried across tasks (``generic`` declares hover's ``search``) does this on purpose."""
    from fst_lab.harness import Harness, load_named

    hover = load_named("hover")  # declares `search`; math implements calculator and python
    (tmp_path / "h.yaml").write_text(hover.dumps())
    Session(tiny_config(tmp_path, harness=str(tmp_path / "h.yaml"), run_name="h"), policy=tiny_policy(),
            progress=False)
    assert ("seed harness of stage 0 ('" + str(tmp_path / "h.yaml") + "'): declares tool(s) ['search'] that task "
            "'math' does not implement (it implements ['calculator', 'python'])") in caplog.text

    caplog.clear()
    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(), progress=False)
    assert "declares tool(s)" not in caplog.text  # the math harness declares none
    def tool(name):
        return {"type": "function", "function": {"name": name, "description": "Arithmetic.",
                                                 "parameters": {"type": "object", "properties": {}}}}

    bad = Harness.from_dict({**s.population[0].to_dict(), "tools": [tool("calculatr")]})
    s.edit_harness(0, bad)
    assert "(api): declares tool(s) ['calculatr'] that task 'math'" in caplog.text
    caplog.clear()
    f = next((s.run_dir / "harnesses" / "current").glob("0_*.yaml"))
    f.write_text(Harness.from_dict({**bad.to_dict(), "tools": [tool("calculator"), tool("pyton")]}).dumps())
    s.slow_step(1)
    assert f"({f}): declares tool(s) ['pyton'] that task 'math'" in caplog.text
    assert s.population[0].tool_names == ["calculator", "pyton"]  # applied: a warning, not a refusal

def test_stages_switch_task(tmp_path):
    cfg = tiny_config(tmp_path, mode="rl", cycles=1, steps_per_cycle=3, harness="generic",
                      stages=[{"task": "math", "steps": 1}, {"task": "physics", "steps": 1}, {"task": "codeio"}])
    s = Session(cfg, policy=tiny_policy(), progress=False)
    s.run()
    run = load_run(s.run_dir)
    tasks = [m["task"] for m in run.metrics if m["kind"] == "slow"]
    assert tasks == ["math", "physics", "codeio"]
    assert [e["task"] for e in run.events if e["event"] == "stage"] == ["physics", "codeio"]


def test_evaluate_variants_and_ablation(tmp_path):
    s = Session(tiny_config(tmp_path), policy=tiny_policy(), progress=False)
    s.slow_step(1)
    r = s.evaluate(harness="none")
    assert r["n"] == 2 and 0.0 <= r["reward"] <= 1.0
    ab = s.channel_ablation()
    assert set(ab) == {"base_weights+seed_harness", "base_weights+evolved_harness",
                       "trained_weights+seed_harness", "trained_weights+evolved_harness"}
    recs = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(x["kind"] == "ablation" for x in recs)
    s.evaluate()  # recorded: with how concentrated its answers were, from the same trajectories
    ev = [x for x in recs + [json.loads(s.run_dir.joinpath("metrics.jsonl").read_text().splitlines()[-1])]
          if x["kind"] == "eval"][-1]
    exs = s.task.examples("val", s.config.eval_size)
    assert ev["constant_floor"] == max(collections.Counter(str(e.answer) for e in exs).values()) / len(exs)
    assert ev["answer_unparsed"] == sum(answer_key(s.task, t) is None for t in s.last_trajectories) / len(exs)
    assert ev["k"] == 1 and ev["temperature"] == 0.0  # mean@1 is greedy, and the record says so
    assert s.evaluate(k=2, temperature=0.7, record=False)["temperature"] == 0.7


def test_ctrl_c_after_the_trainer_finished_a_step_still_counts_it(tmp_path):
    """Ctrl-C that lands after the optimizer stepped (StepInterrupted.records holds the step): the session
    counts and records that step before the interrupt propagates, so counters match the weights and the
    next step (or a resume) goes on from there."""
    from fst_lab.stepper import StepInterrupted

    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(), progress=False)
    s.slow_step(1)
    learner = s.learner
    real_step = learner.step

    def step_then_ctrl_c(n=1):  # what a Ctrl-C during the learner's KL probe leaves: one completed step
        e = StepInterrupted(True)
        e.records = real_step(n)
        raise e

    learner.step = step_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        s.slow_step(3)
    del learner.step
    assert s.counters["rl_step"] == learner.global_step == 2
    assert [m["rl_step"] for m in load_run(s.run_dir).metrics if m["kind"] == "slow"] == [1, 2]
    assert not s.busy and s.activity is None
    s.slow_step(1)
    assert s.counters["rl_step"] == learner.global_step == 3
    s.close()
    r = Session.resume(s.run_dir, policy=tiny_policy(), progress=False)
    assert r.counters["rl_step"] == r.learner.global_step == 3
    r.close()
