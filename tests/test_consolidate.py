"""Consolidation (issue 18): distilling the evolved harness into the weights.

Tiny random-init Llama (the embedded tokenizer and chat template), level-1 math, a few tokens per sample.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest
import torch

from fst_lab.config import ConfigError
from fst_lab.consolidate import (ConsolidateConfig, ConsolidationError, Consolidator, evolved_teachers,
                                 heldout_items, mean_kl, minimal_harness, prompt_ids, token_kl)
from fst_lab.errors import FstLabError
from fst_lab.harness import Harness, load_named
from fst_lab.models import Policy, ensure_converted, load_tokenizer


_TOK = []


def make_tiny(seed: int = 0) -> Policy:
    """A tiny random Llama built from a config, with larger init weights than the default (0.2 vs 0.02) so
    that its next-token distribution depends visibly on the context (the harness)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not _TOK:
        _TOK.append(load_tokenizer(str(ensure_converted())))
    tok = _TOK[0]
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return Policy(model=model, tokenizer=tok, name=f"tiny-{seed}")


@pytest.fixture(scope="module")
def task():
    from fst_lab.tasks import get_task

    return get_task("math", level=1, seed=0)


@pytest.fixture(scope="module")
def seed():
    return load_named("math")


@pytest.fixture(scope="module")
def evolved(seed):
    """A stand-in for a GEPA-evolved harness: a longer system prompt and a second few-shot conversation."""
    shots = list(seed.few_shot) + [[{"role": "user", "content": "Tom has 9 apples and eats 2. How many are left?"},
                                    {"role": "assistant", "content": "9 - 2 = 7.\nAnswer: 7"}]]
    d = seed.to_dict(with_lineage=False)
    d.update(system_prompt="You are an expert arithmetic tutor. Read the problem twice, add or subtract the "
                           "numbers one at a time, check the result, and finish with 'Answer: <number>'.",
             few_shot=shots, lineage={"parents": [seed.id], "origin": "gepa", "round": 1})
    return Harness.from_dict(d)


def _cfg(**kw):
    base = dict(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, learning_rate=1e-2, lora_r=0,
                eval_size=6, seed=0)
    base.update(kw)
    return ConsolidateConfig(**base)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- config and harnesses
def test_config_is_validated_with_field_paths():
    with pytest.raises(ConfigError, match=r"consolidate\.student: must be one of none \| seed \| short"):
        ConsolidateConfig(student="tiny")
    with pytest.raises(ConfigError, match=r"consolidate\.samples_per_prompt"):
        ConsolidateConfig(samples_per_prompt=0)
    with pytest.raises(ConfigError, match=r"consolidate\.rl_coef"):
        ConsolidateConfig(rl_coef=-1.0)
    for f in ConsolidateConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_minimal_harness_modes(seed):
    assert minimal_harness(seed, "seed") is seed
    bare = minimal_harness(seed, "none")
    msgs, tools = bare.render({"question": "What is 2+3?"})
    assert msgs == [{"role": "user", "content": "What is 2+3?"}] and tools is None
    short = minimal_harness(seed, "short")
    msgs, _ = short.render({"question": "What is 2+3?"})
    assert [m["role"] for m in msgs] == ["system", "user"] and "Answer: <number>" in msgs[0]["content"]
    assert short.lineage.parents == (seed.id,)
    custom = minimal_harness(seed, "short", "Be brief.")
    assert custom.system_prompt == "Be brief."


def test_hover_short_student_keeps_tools():
    hover = load_named("hover")
    assert minimal_harness(hover, "short").tools == hover.tools
    assert minimal_harness(hover, "none").tools == ()


def test_no_evolved_harness_is_a_clear_error(seed, evolved):
    with pytest.raises(ConsolidationError, match="nothing to distil") as e:
        evolved_teachers([seed], seed)
    assert isinstance(e.value, FstLabError)
    # the seed ranked first: 'best' still picks the best *evolved* harness
    assert evolved_teachers([seed, evolved], seed, "best", {seed.id: 1.0, evolved.id: 0.5}) == [evolved]
    assert evolved_teachers([seed, evolved], seed, "population", {seed.id: 1.0}) == [seed, evolved]


def test_token_kl_is_reverse_kl_and_topk_close_to_full():
    torch.manual_seed(0)
    s, t = torch.randn(5, 50), torch.randn(5, 50)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    want = (ls.exp() * (ls - lt)).sum(-1)  # KL(student || teacher)
    assert torch.allclose(token_kl(s, t, "full"), want, atol=1e-5)
    assert torch.allclose(token_kl(s, t, "topk", top_k=50), want, atol=1e-4)
    assert torch.allclose(token_kl(s, s, "full"), torch.zeros(5), atol=1e-6)


# ---------------------------------------------------------------------------- the step
def test_consolidation_lowers_heldout_kl_and_changes_weights(task, seed, evolved):
    pol = make_tiny(seed=1)
    student = minimal_harness(seed, "short")
    c = Consolidator(pol, task, [evolved], student, _cfg())
    teacher_before = {n: p.clone() for n, p in c.teacher_model.named_parameters()}
    before_w = _weights(c.policy.model)
    kl0 = c.heldout_kl()
    assert kl0 > 0.1, "student and teacher contexts should disagree before consolidation"
    recs = c.step(6)
    kl1 = c.heldout_kl()
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert all(r["rollouts"] == 8 and r["tokens"] > 0 for r in recs)
    assert recs[0]["teacher"] == [evolved.id] and recs[0]["student_harness"] == student.id
    assert kl1 < 0.85 * kl0, f"held-out KL to the teacher did not drop: {kl0:.4f} -> {kl1:.4f}"
    assert any(not torch.equal(before_w[n], p) for n, p in c.policy.model.named_parameters() if n in before_w)
    # the teacher is a frozen snapshot: consolidation never moves it
    assert all(torch.equal(teacher_before[n], p) for n, p in c.teacher_model.named_parameters())
    held = set(e.id for e in task.examples("val", 6))
    assert not held & {e.id for r in range(6) for e in c._examples_for(r)}, "held-out prompts leaked into training"


def test_lora_student_and_population_teachers(task, seed, evolved):
    pol = make_tiny(seed=2)
    other = seed.with_components({"system_prompt": "Add carefully. End with 'Answer: <number>'."},
                                 origin="gepa", round=1)
    c = Consolidator(pol, task, [evolved, other], minimal_harness(seed, "none"),
                     _cfg(lora_r=4, teacher="population", kl_support="topk", top_k=16, prompts_per_step=2))
    names = [n for n, p in c.policy.model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    before = _weights(c.policy.model)
    rec = c.step(2)[-1]
    assert rec["teacher"] == [evolved.id, other.id] and rec["kl_teacher"] >= 0
    assert any(not torch.equal(before[n], p) for n, p in c.policy.model.named_parameters() if n in before)
    with pytest.raises(ConfigError, match="multiple of the 2 teacher"):
        Consolidator(make_tiny(seed=2), task, [evolved, other], seed, _cfg(teacher="population",
                                                                            samples_per_prompt=3))


def test_save_and_resume_continue_identically(task, seed, evolved, tmp_path):
    student = minimal_harness(seed, "short")
    a = Consolidator(make_tiny(seed=3), task, [evolved], student, _cfg(prompts_per_step=2))
    a.step(2)
    a.save_state(tmp_path / "ck")
    want = a.step(1)[-1]
    # a fresh model (other weights): everything, the teacher snapshot included, comes from the checkpoint
    b = Consolidator(make_tiny(seed=4), task, [evolved], student, _cfg(prompts_per_step=2))
    b.load_state(tmp_path / "ck")
    assert (b.steps_done, b.samples) == (2, 8)
    got = b.step(1)[-1]
    assert got["step"] == want["step"] == 3
    assert got["kl_teacher"] == pytest.approx(want["kl_teacher"], rel=1e-5)
    for (n, p), (_, q) in zip(a.policy.model.named_parameters(), b.policy.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    with pytest.raises(ConsolidationError, match="not a complete consolidation checkpoint"):
        b.load_state(tmp_path / "missing")


def test_sft_mode_trains_on_teacher_completions(task, seed, evolved):
    c = Consolidator(make_tiny(seed=5), task, [evolved], minimal_harness(seed, "short"),
                     _cfg(method="sft", sft_min_reward=0.0, prompts_per_step=2, learning_rate=1e-3))
    before = _weights(c.policy.model)
    rec = c.step(1)[-1]
    assert rec["kept"] == 4 and rec["loss"] > 0 and rec["method"] == "sft"
    assert any(not torch.equal(before[n], p) for n, p in c.policy.model.named_parameters() if n in before)
    # nothing good enough: no update
    c2 = Consolidator(make_tiny(seed=5), task, [evolved], seed, _cfg(method="sft", sft_min_reward=1.0,
                                                                     prompts_per_step=1))
    before = _weights(c2.policy.model)
    rec = c2.step(1)[-1]
    if rec["kept"] == 0:
        assert all(torch.equal(before[n], p) for n, p in c2.policy.model.named_parameters() if n in before)


def test_heldout_items_align_the_same_completion_in_both_contexts(task, seed, evolved):
    pol = make_tiny(seed=6)
    exs = task.examples("val", 2)
    items = heldout_items(pol, task, seed, [evolved], exs, max_new_tokens=4)
    tok = pol.tokenizer
    assert items[0].teacher_prompt == prompt_ids(tok, evolved, exs[0])
    assert items[0].student_prompt == prompt_ids(tok, seed, exs[0])
    assert len(items[0].teacher_prompt) > len(items[0].student_prompt)
    # the same weights reading the same context: zero KL
    same = [type(items[0])(it.student_prompt, it.student_prompt, it.completion, it.mask) for it in items]
    assert mean_kl(pol.model, pol.model, same) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- RL + distillation
def _rl_run(seed_h, evolved, tmp_path, name, coef=None, steps=2):
    from fst_lab.consolidate import DistillTerm
    from fst_lab.models import tiny_policy
    from fst_lab.slow import SlowConfig, SlowLearner
    from fst_lab.tasks.toy import ParityTask

    cfg = SlowConfig(num_generations=4, population_size=2, prompts_per_step=2, max_completion_length=6,
                     warmup_steps=0, learning_rate=1e-2, kl_probe_size=0, seed=0)
    torch.manual_seed(0)
    learner = SlowLearner(tiny_policy(seed=0), ParityTask(n=6), [evolved, seed_h], cfg, output_dir=tmp_path / name)
    term = None
    if coef is not None:
        term = DistillTerm(learner, minimal_harness(seed_h, "short"), coef)
        learner.extra_loss = term
    with learner:
        recs = learner.step(steps)
        weights = {k: v.detach().clone() for k, v in learner.trainer.model.named_parameters() if "lora" in k}
    return recs, weights, term


def test_rl_plus_distillation_lambda_zero_is_the_slow_loop_bit_for_bit(seed, evolved, tmp_path):
    plain, w_plain, _ = _rl_run(seed, evolved, tmp_path, "plain")
    zero, w_zero, term0 = _rl_run(seed, evolved, tmp_path, "zero", coef=0.0)
    assert [r["loss"] for r in zero] == [r["loss"] for r in plain]
    assert all(torch.equal(w_plain[k], w_zero[k]) for k in w_plain)
    assert not term0.values and all("extra_loss" not in r for r in zero)
    # lambda > 0: the distillation term is computed on the RL rollouts and changes the update
    dist, w_dist, term = _rl_run(seed, evolved, tmp_path, "dist", coef=1.0)
    assert term.values and all(v > 0 for v in term.values), "no row was matched to its problem"
    assert all(r.get("extra_loss", 0) > 0 for r in dist)
    assert any(not torch.equal(w_plain[k], w_dist[k]) for k in w_plain)


# ---------------------------------------------------------------------------- benchmark smoke
def test_benchmark_smoke_runs_end_to_end(tmp_path):
    from benchmarks import bench_consolidate as bench

    res = bench.main(["--smoke", "--out", str(tmp_path), "--rl-distill-steps", "1", "--rl-coef", "0.5"])
    row = res["runs"][0]
    assert set(row["reward"]) == {f"{w}+{h}" for w in bench.WEIGHTS for h in bench.HARNESSES}
    assert row["prompt_tokens"]["minimal"] < row["prompt_tokens"]["seed"] < row["prompt_tokens"]["evolved"]
    assert row["tokens_saved_per_query"] > 0 and row["heldout_kl_before"] >= 0
    assert (tmp_path / "consolidate.json").exists()
    assert "share of the harness gain kept" in bench.markdown(res)
    arms = res["rl_distill"][0]["arms"]
    assert set(arms) == {"lambda=0", "lambda=0.5"}
    assert arms["lambda=0"]["rollouts"] == arms["lambda=0.5"]["rollouts"] == 8  # equal samples
    assert not arms["lambda=0"]["distill_kl"] and arms["lambda=0.5"]["distill_kl"]


# ---------------------------------------------------------------------------- in a session (run directory)
def _session(tmp_path, name, **kw):
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    base = dict(task="math", cycles=1, steps_per_cycle=1, population_size=1, num_generations=2, prompts_per_step=1,
                fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=6, fast={"budget_passes": 1},
                slow={"learning_rate": 1e-3}, runs_root=str(tmp_path), run_name=name, seed=0, save_rollouts=2)
    base.update(kw)
    s = Session(FSTConfig(**base), policy=tiny_policy(seed=0), progress=False)
    s.config.consolidate = ConsolidateConfig(prompts_per_step=1, samples_per_prompt=2, learning_rate=1e-2)
    return s


def _tree(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_session_consolidation_without_an_evolved_harness_errors_and_writes_nothing(tmp_path):
    from fst_lab.consolidate_session import session_consolidate

    s = _session(tmp_path, "none")
    before = _tree(s.run_dir)
    with pytest.raises(ConsolidationError, match="nothing to distil"):
        session_consolidate(s, 2)
    assert _tree(s.run_dir) == before and s.learner is None and s.counters["consolidate_step"] == 0
    s.close()


def test_session_consolidation_stops_and_resumes_with_the_same_counters(tmp_path):
    from fst_lab import records
    from fst_lab.consolidate_session import session_consolidate
    from fst_lab.models import tiny_policy
    from fst_lab.runs import load_run
    from fst_lab.session import Session

    long_prompt = {"system_prompt": "You are a meticulous arithmetic tutor. Add and subtract step by step, check "
                                    "every step twice, then end with 'Answer: <number>'."}
    a = _session(tmp_path, "a")
    a.edit_harness(0, long_prompt)  # the 'evolved' harness: a hand edit (origin manual)
    want = session_consolidate(a, 2)
    a.close()

    b = _session(tmp_path, "b")
    b.edit_harness(0, long_prompt)
    b.listeners.append(lambda rec: rec.get("kind") == "consolidate" and b.request_stop())
    got = session_consolidate(b, 2)  # the stop lands after the first step
    assert len(got) == 1 and b.counters["consolidate_step"] == 1 and b.counters["samples_distill"] == 2
    b.close()
    ev = [e for e in load_run(b.run_dir).events if e.get("event") == "consolidate"]
    assert ev and ev[0]["teacher"] == [b.population[0].id] and ev[0]["student"] == "short"

    r = Session.resume(b.run_dir, policy=tiny_policy(seed=0), progress=False)
    r.config.consolidate = b.config.consolidate
    assert (r.counters["consolidate_step"], r.counters["samples_distill"], r.counters["rl_step"]) == (1, 2, 0)
    rest = session_consolidate(r, 1)
    assert rest[0]["consolidate_step"] == 2 and rest[0]["samples_distill"] == 4
    # same teacher snapshot, weights and optimizer as the run that was never stopped
    assert rest[0]["kl_teacher"] == pytest.approx(want[1]["kl_teacher"], rel=1e-4)
    r.close()
    recs = [x for x in load_run(b.run_dir).metrics if x["kind"] == records.CONSOLIDATE]
    assert [x["consolidate_step"] for x in recs] == [1, 2]
    assert all(x["samples"] == 0 for x in recs), "student rollouts must stay off the RL/fast sample axis"


def test_rl_distill_term_only_when_lambda_is_set(seed):
    from types import SimpleNamespace

    from fst_lab.consolidate import DistillTerm
    from fst_lab.consolidate_session import rl_distill_term

    sess = SimpleNamespace(config=SimpleNamespace(consolidate=ConsolidateConfig()), seed_harness=seed)
    assert rl_distill_term(sess, object()) is None
    sess.config.consolidate = ConsolidateConfig(rl_coef=0.2, student="none")
    term = rl_distill_term(sess, object())
    assert isinstance(term, DistillTerm) and term.coef == 0.2 and term.student.system_prompt == ""


def test_session_sft_consolidation_trains_the_live_adapter_and_rl_continues(tmp_path):
    s = _session(tmp_path, "sft")
    s.config.consolidate = ConsolidateConfig(method="sft", sft_min_reward=0.0, prompts_per_step=1,
                                             samples_per_prompt=2, learning_rate=1e-2)
    s.edit_harness(0, {"system_prompt": "You are a meticulous arithmetic tutor."})
    before = {n: p.detach().clone() for n, p in s._ensure_slow().trainer.model.named_parameters() if "lora" in n}
    rec = s.consolidate(1)[-1]
    assert rec["method"] == "sft" and rec["kept"] == 2 and rec["consolidate_step"] == 1
    after = dict(s.learner.trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert s.slow_step(1)[-1]["rl_step"] == 1  # the GRPO trainer carries on with the consolidated adapter
    s.close()


def test_schedule_token_c_runs_a_consolidation_step_and_is_validated(tmp_path):
    from fst_lab.config import FSTConfig

    assert FSTConfig(schedule="p -> w*2 -> c*2").cycle_plan() == ["p", "w", "w", "c", "c"]
    with pytest.raises(ConfigError, match="schedule"):
        FSTConfig(mode="gepa", schedule="p -> c").cycle_plan()
    with pytest.raises(ConfigError, match="schedule"):
        FSTConfig(schedule="p -> x").cycle_plan()
    s = _session(tmp_path, "sched", schedule="w -> c")
    s.edit_harness(0, {"system_prompt": "You are a meticulous arithmetic tutor."})
    s.run(1, evaluate=False)
    kinds = [r["kind"] for r in s.metrics]
    assert kinds == ["slow", "consolidate"]
    assert s.counters["consolidate_step"] == 1 and s.counters["rl_step"] == 1 and s.counters["cycle"] == 1
    s.close()


def test_app_weights_choice_consolidated_vs_trained_reads_the_right_tensors(tmp_path):
    """The arena's 'trained' weights of a consolidated run are the weights from before consolidating (the
    checkpoint's teacher snapshot); 'consolidated' the checkpoint itself; a run with no consolidation says so."""
    import torch
    from safetensors.torch import load_file

    from fst_lab.app.weights import PolicyCache, default_weights
    from fst_lab.models import tiny_policy
    from fst_lab.runs import load_run

    s = _session(tmp_path, "cons", schedule="w")
    s.edit_harness(0, {"system_prompt": "Add step by step, check twice, end with 'Answer: <number>'."})
    assert default_weights(load_run(s.run_dir)) == "base"  # nothing trained yet: the arena opens on the base
    s.slow_step(1)
    assert default_weights(load_run(s.run_dir)) == "trained"
    ck = s.rundir.checkpoint_dir(s.checkpoint)
    before = load_file(str(ck / "adapter_model.safetensors"))  # the RL-trained adapter
    cache = PolicyCache(policy_factory=lambda name: tiny_policy(seed=0))
    _, notice = cache.for_run(load_run(s.run_dir), "consolidated")
    assert "no consolidation steps" in notice and "weights: trained" in notice

    s.consolidate(2)
    s.close()
    after = load_file(str(ck / "adapter_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    view = load_run(s.run_dir)
    assert default_weights(view) == "consolidated" and default_weights(None) == "base"

    def lora(policy):
        return {n.replace(".default", ""): p.detach() for n, p in policy.model.named_parameters() if "lora_" in n}

    trained, t_notice = cache.for_run(view, "trained")
    consolidated, c_notice = cache.for_run(view, "consolidated")
    assert "before consolidation" in t_notice and "consolidated (" in c_notice and "2 consolidation steps" in c_notice
    assert lora(trained) and all(torch.equal(v, before[k]) for k, v in lora(trained).items())
    assert all(torch.equal(v, after[k]) for k, v in lora(consolidated).items())
