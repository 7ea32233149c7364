"""The slow loop: one persistent TRL GRPOTrainer, per-rollout harnesses, multi-turn tool episodes, resume.

Tiny random models (``fst_lab.models.tiny_policy``) with G=4, K=2, 2 problems per step and 8 new tokens.
A random model never answers a real task right, so most tests use a toy task whose reward is a parity
of the completion text: varied rewards, hence non-zero advantages and real gradient steps.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from fst_lab.harness import Harness
from fst_lab.models import Generation, Policy
from fst_lab.slow import Episode, SlowConfig, SlowLearner, episode_tokens
from fst_lab.tasks.base import Example, Score

G, K, PPS = 4, 2, 2
LABELS = ("SUPPORTED", "NOT_SUPPORTED")


class ParityTask:
    """Reward = parity of the completion's characters; records what the scorer sees."""

    name = "parity"

    def __init__(self, prefix: str = "p"):
        self.prefix = prefix
        self.seen: list[tuple[str, str]] = []  # (example id, system prompt) per scored rollout

    def examples(self, split, n=None):
        exs = [Example(id=f"{self.prefix}-{split}-{i}", inputs={"question": f"What is {i} + {i}?"}, answer=str(2 * i))
               for i in range(5)]
        return exs[:n] if n else exs

    def score(self, example, traj):
        self.seen.append((example.id, traj.messages[0]["content"] if traj.messages[0]["role"] == "system" else ""))
        return Score(float(sum(map(ord, traj.final_text)) % 2), "parity")

    def tool_impls(self):
        return {}


def _harness(harness_dir, name: str, system: str) -> Harness:
    """A seed harness with a given system prompt and no few-shot (short prompts keep the tests fast)."""
    return Harness.load(harness_dir / f"{name}.yaml").with_components({"system_prompt": system, "few_shot": "[]"},
                                                                      origin="manual")


def _cfg(**kw) -> SlowConfig:
    base = dict(num_generations=G, population_size=K, prompts_per_step=PPS, max_completion_length=8,
                warmup_steps=0, learning_rate=1e-2, kl_probe_size=0, seed=0)
    base.update(kw)
    return SlowConfig(**base)


def _lora(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.trainer.model.named_parameters() if "lora" in k}


@pytest.fixture
def pop(harness_dir):
    return [_harness(harness_dir, "math", "You are A."), _harness(harness_dir, "math", "You are B.")]


@pytest.fixture
def learner(tiny_policy, pop, tmp_path):
    task = ParityTask()
    with SlowLearner(tiny_policy, task, pop, _cfg(kl_probe_size=1), output_dir=tmp_path / "trainer") as lr:
        yield lr


# ------------------------------------------------------------------ config
def test_k_must_divide_g():
    with pytest.raises(ValueError, match=r"K=3.*G=8"):
        SlowConfig(num_generations=8, population_size=3)


def test_vllm_server_mode_refused():
    with pytest.raises(ValueError, match="server.*per-rollout harness"):
        SlowConfig(use_vllm=True, vllm_mode="server")
    SlowConfig(use_vllm=True, vllm_mode="colocate")  # colocate keeps per-rollout prompts


def test_config_defaults_and_help():
    c = SlowConfig()
    assert (c.loss_type, c.epsilon_high, c.beta, c.num_generations, c.population_size) == ("cispo", 4.0, 0.001, 8, 4)
    assert (c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.weight_decay, c.warmup_steps) == (0.9, 0.999, 1e-8, 0.0, 10)
    assert c.max_grad_norm == 0.0 and c.lora and c.lora_r == 16 and not c.gradient_checkpointing
    for f in dataclasses.fields(SlowConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"
    with pytest.raises(ValueError, match="loss_type"):
        SlowConfig(loss_type="ppo")


def test_cpu_backend_never_imports_unsloth():
    code = ("import sys; from fst_lab.slow import SlowConfig; from fst_lab import backends; "
            "from fst_lab.models import Policy; "
            "b = backends.resolve_backend(SlowConfig(), Policy(model=None, tokenizer=None)); "
            "print(b, 'unsloth' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["transformers", "False"]


# ------------------------------------------------------------------ stepping
def test_steps_train_condition_per_rollout_and_swap_population(learner, harness_dir):
    assert learner.config.precision == "fp32" and not learner.trainer.args.bf16  # auto: a test-size model
    task = learner.task
    before = _lora(learner)

    m1 = learner.step(1)
    opt = learner.trainer.optimizer
    assert len(m1) == 1 and learner.global_step == 1
    # each problem's G rollouts: G/K with each harness, in population order
    by_ex: dict[str, list[str]] = {}
    for ex_id, system in task.seen:
        by_ex.setdefault(ex_id, []).append(system)
    assert len(by_ex) == PPS
    for systems in by_ex.values():
        assert systems == ["You are A."] * (G // K) + ["You are B."] * (G // K)
    state_steps = [int(s["step"]) for s in opt.state.values()]
    assert state_steps and set(state_steps) == {1}

    # a new population is used by the very next step
    task.seen.clear()
    learner.set_population([_harness(harness_dir, "math", "You are C."), _harness(harness_dir, "math", "You are D.")])
    m2 = learner.step(1)
    assert {s for _, s in task.seen} == {"You are C.", "You are D."}

    # one optimizer object, its state advancing across step() calls
    assert learner.trainer.optimizer is opt
    assert {int(s["step"]) for s in opt.state.values()} == {2}
    after = _lora(learner)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_A" in k)

    rec = m2[0]
    for key in ("reward", "reward_std", "reward/h0", "reward/h1", "reward_std/h0", "reward_by_harness", "kl_train",
                "kl", "kl_bare", "entropy", "completion_length", "tokens", "rollouts", "step_seconds", "loss",
                "learning_rate", "population"):
        assert key in rec, key
    # per-step figures only: cumulative counters belong to the session's records
    assert not {"samples", "samples_seen", "samples_rl"} & rec.keys()
    assert "unsloth" not in sys.modules  # the CPU path never imports it (it raises without a GPU)
    assert rec["global_step"] == 2 and rec["rollouts"] == G * PPS and learner.samples_seen == 2 * G * PPS
    assert rec["tokens"] == sum(len(e.completion_ids) for e in learner.last_episodes)  # no tool turns here
    assert rec["population"] == [h.id for h in learner.population]
    assert rec["kl"] > 0 and rec["kl_train"] >= 0
    assert abs(rec["reward"] - (rec["reward/h0"] + rec["reward/h1"]) / 2) < 1e-6

    # continual learning: a task switch is used by the very next step too
    other = ParityTask(prefix="other")
    learner.set_task(other)
    learner.step(1)
    assert other.seen and all(ex_id.startswith("other-train-") for ex_id, _ in other.seen)


def test_kl_probe_encodes_the_shared_harness_prefix_once_same_kl(learner, monkeypatch):
    """Probe rows rendered with one harness share its system prompt: it is encoded once (fewer positions run)
    and the KL is the token-weighted mean of the single-example values, each computed without sharing."""
    from fst_lab import klprobe
    from fst_lab.models import encode_shared_prefixes

    learner.step(1)
    tok, exs = learner.tokenizer, learner.task.examples("val", 3)
    h = learner.population[0].with_components({"system_prompt": "Solve it step by step, then answer. " * 4},
                                              origin="manual")
    n_tok = [len(tok(f"Answer: {e.answer}{tok.eos_token}", add_special_tokens=False)["input_ids"]) for e in exs]
    singles = [learner.kl_probe(h, examples=[e]) for e in exs]
    shared = []

    def spy(*args, **kwargs):
        enc = encode_shared_prefixes(*args, **kwargs)
        shared.append(None if enc is None else enc[3])
        return enc

    monkeypatch.setattr(klprobe, "encode_shared_prefixes", spy)
    kl = learner.kl_probe(h, examples=exs)
    assert shared and all(p is not None and p >= 16 for p in shared)  # the prefix path ran
    assert kl > 0 and kl == pytest.approx(sum(k * n for k, n in zip(singles, n_tok)) / sum(n_tok), rel=1e-4)


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="counts OpenMP worker threads in /proc (Linux, >= 2 cores)")
def test_release_openmp_pool_ends_the_calling_threads_workers():
    """Parallel work starts an OpenMP pool for the thread that runs it; releasing it ends those OS threads."""
    import threading

    from fst_lab.stepper import release_openmp_pool

    seen = {}

    def work():
        a = torch.randn(512, 512)
        before = _os_threads()
        _ = a @ a  # parallel: this thread's pool starts
        seen["created"] = _os_threads() - before
        seen["released"] = release_openmp_pool()
        seen["left"] = seen["created"] & _os_threads()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # another test may have set 1 (a new thread inherits it)
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(threads)
    assert seen["created"] and seen["released"] and not seen["left"], seen


def test_stepper_hands_over_without_its_openmp_pool(learner, monkeypatch):
    """Caller and worker each release their OpenMP pool before the other computes (one live pool at a time)."""
    import threading

    from fst_lab import stepper

    calls = []
    real = stepper.release_openmp_pool
    monkeypatch.setattr(stepper, "release_openmp_pool",
                        lambda: (calls.append(threading.current_thread().name), real())[1])
    learner.step(1)
    me = threading.current_thread().name
    assert me in calls  # the caller, before it grants the step
    assert calls[-1] == "fst-trainer-step" and calls.index(me) < len(calls) - 1  # the worker, as it parks after


def test_policy_views_deepcopy_and_adapter_roundtrip(learner, tmp_path):
    learner.step(1)
    saved = _lora(learner)
    learner.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    ids = torch.tensor([[1, 2, 3, 4]])
    live = learner.policy.model
    copied = copy.deepcopy(live)  # TRL patches forward; the copy must run its own weights
    base = learner.base_policy().model
    with torch.no_grad():
        a, c, b = live(input_ids=ids).logits, copied(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.allclose(a, c, atol=1e-6)
    assert not torch.allclose(a, b)  # the adapter moved the policy away from the start weights

    opt = learner.trainer.optimizer
    learner.step(1)
    assert any(not torch.equal(saved[k], v) for k, v in _lora(learner).items())
    with torch.no_grad():
        a2, c2 = live(input_ids=ids).logits, copied(input_ids=ids).logits
        merged = learner.copy_policy().model(input_ids=ids).logits
    assert torch.allclose(c, c2) and not torch.allclose(a2, c2)
    assert torch.allclose(merged, a2, atol=1e-5)

    # kl_probe == the KL computed by hand from full logits (response positions only)
    from fst_lab.models import render_chat

    tok, ex = learner.tokenizer, learner.probe_examples()[0]
    p_ids = tok(render_chat(tok, *learner.population[0].render(ex.inputs)), add_special_tokens=False)["input_ids"]
    t_ids = tok(f"Answer: {ex.answer}{tok.eos_token}", add_special_tokens=False)["input_ids"]
    x = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        lp = torch.log_softmax(live(input_ids=x).logits[0, len(p_ids) - 1:-1], -1)
        lq = torch.log_softmax(base(input_ids=x).logits[0, len(p_ids) - 1:-1], -1)
    want = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert learner.kl_probe("probe", examples=[ex]) == pytest.approx(want, rel=1e-4)
    # several examples run as one left-padded batch: the token-weighted mean of the single-example values
    exs = learner.task.examples("val", 3)
    n_tok = [len(tok(f"Answer: {e.answer}{tok.eos_token}", add_special_tokens=False)["input_ids"]) for e in exs]
    singles = [learner.kl_probe(None, examples=[e]) for e in exs]
    want = sum(k * n for k, n in zip(singles, n_tok)) / sum(n_tok)
    assert learner.kl_probe(None, examples=exs) == pytest.approx(want, rel=1e-4)

    learner.load_adapter(tmp_path / "adapter")
    assert all(torch.equal(saved[k], v) for k, v in _lora(learner).items())
    assert learner.trainer.optimizer is opt  # loaded in place: the optimizer still owns these tensors


# ------------------------------------------------------------------ weights and resume
def test_save_state_load_state_resumes(tiny_policy, pop, tmp_path):
    from fst_lab.models import tiny_policy as make

    with SlowLearner(tiny_policy, ParityTask(), pop, _cfg(), output_dir=tmp_path / "a") as a:
        a.step(1)
        a.save_state(tmp_path / "ckpt")
        opt_a = copy.deepcopy(a.trainer.optimizer.state_dict())
        lora_a = _lora(a)
        lr_a = a.trainer.lr_scheduler.state_dict()
        seen_a = a.samples_seen
    with SlowLearner(make(seed=0), ParityTask(), pop[:1], _cfg(), output_dir=tmp_path / "b") as b:
        b.load_state(tmp_path / "ckpt")
        assert b.global_step == 1 and b.samples_seen == seen_a
        assert [h.id for h in b.population] == [h.id for h in pop]
        assert all(torch.equal(lora_a[k], v) for k, v in _lora(b).items())
        opt_b = b.trainer.optimizer.state_dict()
        assert opt_b["state"].keys() == opt_a["state"].keys()
        for i, st in opt_a["state"].items():
            for name, t in st.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_b["state"][i][name])), (i, name)
        assert b.trainer.lr_scheduler.state_dict()["last_epoch"] == lr_a["last_epoch"]
        with pytest.raises(RuntimeError, match="fresh"):
            b.load_state(tmp_path / "ckpt")
        m = b.step(1)
        assert b.global_step == 2 and m[0]["global_step"] == 2
        assert {int(s["step"]) for s in b.trainer.optimizer.state.values()} == {2}


# ------------------------------------------------------------------ multi-turn tool episodes
@dataclasses.dataclass
class ScriptedToolPolicy(Policy):
    """Turn 1: call ``search`` on the claim's first two words. Turn 2: verdicts alternate, so every group
    has right and wrong answers (non-zero advantages)."""

    verdicts: itertools.cycle = dataclasses.field(default_factory=lambda: itertools.cycle(LABELS))

    def generate_text(self, prompts, *, max_new_tokens=128, temperature=0.0, top_p=1.0, seed=None, batch_size=16):
        out = []
        for p in prompts:
            if "<tool_response>" in p.rsplit("<|im_start|>user", 1)[-1]:  # the last user turn is a tool result
                text = f"The search says so.\nAnswer: {next(self.verdicts)}"
            else:
                claim = p.rsplit("Claim:", 1)[-1].split()
                query = f"{claim[0]} {claim[1]}"
                text = '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>' % query
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Generation(text=text, prompt_tokens=0, completion_tokens=len(ids), finished=True,
                                  completion_ids=ids))
        return out


def test_multi_turn_tool_episode_tokens(tiny_policy, harness_dir):
    from fst_lab.rollout import rollout_pairs
    from fst_lab.tasks import get_task

    task = get_task("hover", level=1)
    h = Harness.load(harness_dir / "hover.yaml")
    scripted = ScriptedToolPolicy(model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    traj = rollout_pairs(scripted, [(h, task.examples("train", 1)[0])], task)[0]
    assert traj.n_turns == 2 and traj.tool_calls and not traj.tool_calls[0]["error"]
    ep = episode_tokens(tiny_policy.tokenizer, traj)
    assert isinstance(ep, Episode) and ep.multi_turn and not ep.fallback
    t1, t2 = traj.turns
    n1, n2 = len(t1.completion_ids), len(t2.completion_ids)
    assert ep.mask[:n1] == [1] * n1 and ep.mask[-n2:] == [1] * n2
    assert ep.observation_tokens > 0 and ep.mask[n1:-n2] == [0] * ep.observation_tokens
    tok = tiny_policy.tokenizer
    # what the loss conditions turn 2 on is exactly the prompt the model saw at turn 2
    ctx = tok.decode(ep.prompt_ids + ep.completion_ids[:-n2])
    assert ctx == t2.prompt
    assert "<tool_response>" in tok.decode(ep.completion_ids[n1:-n2])


def test_hover_tool_rollouts_train(tiny_policy, harness_dir, tmp_path):
    from fst_lab.tasks import get_task

    task = get_task("hover", level=1)
    # the seed's few-shot demo only lengthens the prompts here (the script decides what to generate)
    pop = [Harness.load(harness_dir / "hover.yaml").with_components({"few_shot": "[]"}, origin="manual")]
    cfg = _cfg(population_size=1, prompts_per_step=1, drop_zero_variance_groups=False, kl_probe_size=0)
    with SlowLearner(tiny_policy, task, pop, cfg, output_dir=tmp_path / "t") as lr:
        lr._gen_policy = ScriptedToolPolicy(model=lr.trainer.model, tokenizer=tiny_policy.tokenizer)
        before = _lora(lr)
        rec = lr.step(1)[-1]
        trajs = lr.last_trajectories
        assert len(trajs) == G
        assert all(t.tool_calls and t.tool_calls[0]["observation"] and not t.tool_calls[0]["error"] for t in trajs)
        assert rec["fst/tool_calls"] == 1.0 and rec["fst/turns"] == 2.0 and rec["fst/observation_tokens"] > 0
        assert rec["fst/answer_unparsed"] == 0.0  # every scripted verdict is a label
        # TRL counted only model tokens (env_mask) as the completion length
        assert rec["completions/mean_length"] == pytest.approx(rec["fst/model_tokens"])
        assert all(e.multi_turn and e.observation_tokens for e in lr.last_episodes)
        assert any(not torch.equal(before[k], v) for k, v in _lora(lr).items())


# ------------------------------------------------------------------ full fine-tuning and GPU
def test_full_finetune_with_kl(tiny_policy, pop, tmp_path):
    cfg = _cfg(lora=False, learning_rate=1e-3, kl_probe_size=1)
    with SlowLearner(tiny_policy, ParityTask(), pop, cfg, output_dir=tmp_path / "ft") as lr:
        w0 = lr.trainer.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
        rec = lr.step(1)[-1]
        assert not torch.equal(w0, lr.trainer.model.model.layers[0].self_attn.q_proj.weight)
        assert rec["kl"] > 0 and "kl_train" in rec
        base = lr.base_policy().model
        assert torch.equal(base.model.layers[0].self_attn.q_proj.weight, w0)


@pytest.mark.gpu
def test_gpu_step(tmp_path, harness_dir):  # pragma: no cover - needs CUDA
    from fst_lab.models import tiny_policy

    pol = tiny_policy()
    pol.model.to("cuda")
    pop = [_harness(harness_dir, "math", "You are A."), _harness(harness_dir, "math", "You are B.")]
    with SlowLearner(pol, ParityTask(), pop, _cfg(), output_dir=tmp_path / "gpu") as lr:
        assert lr.step(1)[0]["global_step"] == 1


# ------------------------------------------------------------------ extension point: an extra loss term
def _one_step(harness_dir, tmp_path, name, **kw):
    """A fresh tiny learner (same seeds every time), one step -> (record, LoRA weights after)."""
    from fst_lab.models import tiny_policy as make

    pop = [_harness(harness_dir, "math", "You are A."), _harness(harness_dir, "math", "You are B.")]
    hook_attr = kw.pop("hook_attr", "unset")
    with SlowLearner(make(seed=0), ParityTask(), pop, _cfg(), output_dir=tmp_path / name, **kw) as lr:
        if hook_attr != "unset":
            lr.extra_loss = hook_attr
        rec = lr.step(1)[-1]
        return rec, _lora(lr)


def test_extra_loss_none_is_trls_loss_bit_for_bit_and_a_term_is_added(harness_dir, tmp_path):
    plain, w_plain = _one_step(harness_dir, tmp_path, "plain")
    calls = []

    def none_hook(model, inputs):
        calls.append(sorted(inputs))
        return None

    nop, w_nop = _one_step(harness_dir, tmp_path, "none", extra_loss=none_hook)
    nop_attr, w_nop_attr = _one_step(harness_dir, tmp_path, "none-attr", hook_attr=none_hook)
    assert calls and "completion_ids" in calls[0]  # the hook saw TRL's micro-batch
    assert plain["loss"] == nop["loss"] == nop_attr["loss"]
    assert "extra_loss" not in nop
    for k in w_plain:
        assert torch.equal(w_plain[k], w_nop[k]) and torch.equal(w_plain[k], w_nop_attr[k]), k

    def l2(model, inputs):  # a real term with a gradient: pulls LoRA A towards 0
        return 10.0 * sum((p ** 2).sum() for n, p in model.named_parameters() if "lora_A" in n)

    reg, w_reg = _one_step(harness_dir, tmp_path, "l2", extra_loss=l2)
    assert reg["extra_loss"] >= 0.0 and reg["loss"] == pytest.approx(plain["loss"] + reg["extra_loss"], abs=1e-5)
    assert any(not torch.equal(w_plain[k], w_reg[k]) for k in w_plain if "lora_A" in k)


# ------------------------------------------------------------------ Ctrl-C during a step
@dataclasses.dataclass
class SignalingPolicy(Policy):
    """The real generation, announced: sets ``started`` and waits until ``go`` before generating."""

    started: Any = None
    go: Any = None

    def generate_text(self, prompts, **kw):
        self.started.set()
        self.go.wait(30)
        return super().generate_text(prompts, **kw)


def test_ctrl_c_during_generation_abandons_the_step_and_the_learner_carries_on(learner, tmp_path):
    import _thread
    import threading

    from fst_lab.stepper import StepInterrupted

    task = learner.task
    started, go = threading.Event(), threading.Event()
    real = learner._gen_policy
    learner._gen_policy = SignalingPolicy(model=real.model, tokenizer=real.tokenizer, started=started, go=go)

    def ctrl_c():  # Ctrl-C in the caller once the step is generating; generation resumes after it landed
        started.wait(60)
        _thread.interrupt_main()
        learner._stepper._interrupt.wait(10)
        go.set()

    before = _lora(learner)
    timer = threading.Thread(target=ctrl_c, daemon=True)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(StepInterrupted) as info:
        learner.step(2)
    timer.join(10)
    assert time.perf_counter() - t0 < 30
    assert isinstance(info.value, KeyboardInterrupt) and not info.value.completed and info.value.records == []
    assert learner.global_step == 0 and learner.samples_seen == 0 and not task.seen  # nothing scored or trained
    assert all(torch.equal(before[k], v) for k, v in _lora(learner).items())

    # the learner is parked and consistent: save, step (the abandoned step is redone), resume elsewhere
    learner._gen_policy = real
    learner.save_state(tmp_path / "after-interrupt")
    rec = learner.step(1)[-1]
    assert rec["global_step"] == 1 and learner.global_step == 1 and len(task.seen) == G * PPS
    assert any(not torch.equal(before[k], v) for k, v in _lora(learner).items())


def test_ctrl_c_then_close_does_not_hang(tiny_policy, pop, tmp_path):
    import _thread
    import threading

    from fst_lab.stepper import StepInterrupted

    lr = SlowLearner(tiny_policy, ParityTask(), pop, _cfg(), output_dir=tmp_path / "c")
    started, go = threading.Event(), threading.Event()
    real = lr._gen_policy
    lr._gen_policy = SignalingPolicy(model=real.model, tokenizer=real.tokenizer, started=started, go=go)

    def ctrl_c():
        started.wait(60)
        _thread.interrupt_main()
        lr._stepper._interrupt.wait(10)
        go.set()

    threading.Thread(target=ctrl_c, daemon=True).start()
    with pytest.raises(StepInterrupted):
        lr.step(1)
    t0 = time.perf_counter()
    lr.close()
    assert time.perf_counter() - t0 < 10 and lr._stepper._thread is None
    with pytest.raises(RuntimeError, match="not running"):
        lr.step(1)


def test_bf16_precision_trains_with_float32_master_weights(tiny_policy, pop, tmp_path):
    """precision=bf16 on CPU: TRL's own bf16=True switch (autocast), float32 LoRA and optimizer state, and
    the rollouts sample under the same autocast as the loss sees."""
    with SlowLearner(tiny_policy, ParityTask(), pop, _cfg(precision="bf16", kl_probe_size=1),
                     output_dir=tmp_path / "bf16") as lr:
        assert lr.trainer.args.bf16 and lr._gen_policy.autocast == "bf16"
        before = _lora(lr)
        rec = lr.step(1)[-1]
        assert all(v.dtype == torch.float32 for v in _lora(lr).values())
        assert all(t.dtype == torch.float32 for s in lr.trainer.optimizer.state.values() for t in s.values()
                   if torch.is_tensor(t) and t.is_floating_point())
        assert any(not torch.equal(before[k], v) for k, v in _lora(lr).items())
        assert math.isfinite(rec["loss"]) and rec["kl"] > 0
        # The frozen projections and LM head are stored in bf16 (no autocast re-cast per forward); the embedding,
        # norms and LoRA stay float32; the embedding matrix is not rounded by the (formerly tied) LM head's copy.
        frozen = {n: p.dtype for n, p in lr.trainer.model.named_parameters() if not p.requires_grad}
        assert {d for n, d in frozen.items() if n.endswith(("proj.base_layer.weight", "proj.weight", "lm_head.weight"))} \
            == {torch.bfloat16}
        assert {d for n, d in frozen.items() if "embed_tokens" in n or "norm" in n} == {torch.float32}
        # The KV cache stays bf16 under autocast (float32 rotary cos/sin used to promote keys and values to float32,
        # which autocast then cast back for attention at every decoding step).
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            cache = lr.trainer.model(input_ids=torch.tensor([[5, 6, 7, 8]]), use_cache=True).past_key_values
        assert {cache.layers[0].keys.dtype, cache.layers[0].values.dtype} == {torch.bfloat16}
        # A merged copy of these weights still generates outside any autocast (the linears take float32 input).
        copy = lr.copy_policy()
        assert copy.autocast is None and copy.generate([[{"role": "user", "content": "1 0 1"}]], max_new_tokens=3)


def _bf16_rounded_linears(policy):
    """The policy with every nn.Linear weight rounded to bfloat16 (kept float32, untied from the embedding):
    the start weights a bf16 learner stores."""
    for mod in policy.model.modules():
        if type(mod) is torch.nn.Linear:
            mod.weight = torch.nn.Parameter(mod.weight.detach().bfloat16().float())
    return policy


def test_kl_probe_is_float32_under_bf16(tiny_policy, pop, tmp_path):
    """The probe measures drift, not bf16 rounding: a bf16 learner's probe equals an fp32 learner's on the
    same weights (the trainer's bf16 autocast wrapper is bypassed; the bf16-stored linears are read as float32)."""
    from fst_lab.models import tiny_policy as make

    with SlowLearner(tiny_policy, ParityTask(), pop, _cfg(precision="bf16", kl_probe_size=2),
                     output_dir=tmp_path / "b") as b:
        b.step(1)
        b.save_adapter(tmp_path / "adapter")
        kl_b = b.kl_probe()
        with SlowLearner(_bf16_rounded_linears(make(seed=0)), ParityTask(), pop, _cfg(kl_probe_size=2),
                         output_dir=tmp_path / "f") as f:
            f.load_adapter(tmp_path / "adapter")
            assert kl_b > 0 and kl_b == pytest.approx(f.kl_probe(), rel=1e-4)


def test_trl_fused_head_scores_only_completion_positions_on_cpu_same_values(monkeypatch):
    """TRL's fused LM head scores every position (prompt included) on devices without Triton; the learner makes
    it score only the completion positions on CPU. Same log-probs, entropies and gradients; the LM head's
    matmuls shrink to the completion rows (counted exactly with torch's FLOP counter)."""
    import trl.kernels.chunked_logprob as ck
    import trl.trainer.utils as tu
    from torch.utils.flop_counter import FlopCounterMode

    from fst_lab import backends
    from fst_lab.models import tiny_policy as make_tiny

    model = make_tiny(hidden_size=32).model
    tu.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    labels = ids.masked_fill(torch.arange(40) < 32, -100)  # prompt: 32 positions, completion: 8 per row

    def run():
        model.zero_grad()
        with FlopCounterMode(display=False) as fc:
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
            (out.log_probs.sum() + out.entropy.sum()).backward()
        grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        return out.log_probs.detach(), out.entropy.detach(), grad, fc.get_total_flops()

    monkeypatch.setattr(tu, "_use_triton", ck._use_triton)  # TRL's own rule (a learner may have applied ours)
    lp_all, ent_all, g_all, flops_all = run()
    assert backends.score_completions_only_on_cpu() and tu._use_triton(torch.device("cpu"))
    lp, ent, g, flops = run()
    valid = labels[:, 1:] != -100
    torch.testing.assert_close(lp[valid], lp_all[valid])
    torch.testing.assert_close(ent[valid], ent_all[valid])
    assert not lp[~valid].any() and not lp_all[~valid].any()
    torch.testing.assert_close(g, g_all)
    # Every LM-head matmul the counter sees (2*H*V per row scored: the forward and the backward's recompute at
    # least) skips the prompt rows; nothing else changes.
    per_row = 2 * model.config.hidden_size * model.config.vocab_size * (2 * 39 - int(valid.sum()))
    assert flops_all - flops >= 2 * per_row and (flops_all - flops) % per_row == 0


@dataclasses.dataclass
class CappedScriptedPolicy(ScriptedToolPolicy):
    """As ScriptedToolPolicy, but a reply of 'I cannot tell' stops at the token cap (no EOS)."""

    def generate_text(self, prompts, **kw):
        return [dataclasses.replace(g, finished=False) if g.text.endswith("I cannot tell") else g
                for g in super().generate_text(prompts, **kw)]


def test_step_record_counts_rollouts_without_an_answer(tiny_policy, harness_dir, tmp_path):
    """A sampled rollout that gives no parsable answer scores 0 like a wrong one; the step record tells them
    apart (``fst/answer_unparsed``), so a low training reward can be read."""
    from fst_lab.tasks import get_task

    task = get_task("hover", level=1)
    pop = [Harness.load(harness_dir / "hover.yaml").with_components({"few_shot": "[]"}, origin="manual")]
    cfg = _cfg(population_size=1, prompts_per_step=1, drop_zero_variance_groups=False, kl_probe_size=0)
    with SlowLearner(tiny_policy, task, pop, cfg, output_dir=tmp_path / "t") as lr:
        verdicts = itertools.cycle(["SUPPORTED", "probably true", "NOT_SUPPORTED", "I cannot tell"])
        lr._gen_policy = CappedScriptedPolicy(model=lr.trainer.model, tokenizer=tiny_policy.tokenizer,
                                              verdicts=verdicts)
        rec = lr.step(1)[-1]
    finals = [t.final_text.rsplit("Answer: ", 1)[-1] for t in lr.last_trajectories]
    assert len(finals) == G and set(finals) <= {"SUPPORTED", "probably true", "NOT_SUPPORTED", "I cannot tell"}
    unparsed = sum(f not in LABELS for f in finals) / G
    assert 0 < unparsed < 1 and rec["fst/answer_unparsed"] == pytest.approx(unparsed)
    assert rec["fst/truncated"] == pytest.approx(sum(f == "I cannot tell" for f in finals) / G)  # hit the cap
    assert rec["reward"] <= 1 - unparsed  # an unparsed answer never scores
    from fst_lab import records

    assert {k for k in rec if k.startswith("fst/")} <= set(records.KEYS[records.SLOW])  # the schema names them
