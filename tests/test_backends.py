"""Backend selection and model preparation for the slow loop (CPU-side; the GPU path is a stub here)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from fst_lab import backends
from fst_lab.models import Policy
from fst_lab.slow import SlowConfig


def test_cpu_resolves_to_transformers_without_importing_unsloth(tiny_policy):
    assert backends.resolve_backend(SlowConfig(), tiny_policy) == "transformers"
    assert backends.device_args("transformers") == {"use_cpu": True, "bf16": False, "fp16": False}
    assert backends.device_args("transformers", "bf16") == {"use_cpu": True, "bf16": True, "fp16": False}
    with pytest.raises(RuntimeError, match="CUDA"):
        backends.resolve_backend(SlowConfig(backend="unsloth"), tiny_policy)
    assert "unsloth" not in sys.modules


def test_auto_keeps_transformers_for_a_transformers_loaded_policy(monkeypatch, tiny_policy):
    # a GPU box with unsloth installed, but the policy was loaded by transformers
    monkeypatch.setattr(backends, "select_backend", lambda prefer: "unsloth")
    assert backends.resolve_backend(SlowConfig(), tiny_policy) == "transformers"
    with pytest.raises(ValueError, match="loaded by Unsloth"):
        backends.resolve_backend(SlowConfig(backend="unsloth"), tiny_policy)


def test_precision_auto_is_bf16_only_for_lora_on_a_bf16_cpu_and_a_large_enough_model(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    auto = SlowConfig()
    assert auto.precision == "auto"
    assert backends.resolve_precision(auto, "transformers", 576) == "bf16"  # the embedded SmolLM2-135M
    assert backends.resolve_precision(auto, "transformers", 32) == "fp32"  # test-size models
    assert backends.resolve_precision(auto, "transformers", None) == "fp32"
    assert backends.resolve_precision(SlowConfig(lora=False), "transformers", 576) == "fp32"  # full fine-tuning
    assert backends.resolve_precision(SlowConfig(precision="fp32"), "transformers", 576) == "fp32"
    assert backends.resolve_precision(SlowConfig(precision="bf16"), "transformers", 32) == "bf16"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)  # no avx512_bf16 / AMX
    assert backends.resolve_precision(auto, "transformers", 576) == "fp32"
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        SlowConfig(precision="fp16")


def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path):
    def info(flags: str):
        f = tmp_path / f"cpuinfo-{len(list(tmp_path.iterdir()))}"
        f.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        return str(f)

    assert backends.cpu_has_bf16(info("fpu sse avx2 avx512f avx512_bf16 avx512_vnni"))  # AVX512-BF16 (Zen 4)
    assert backends.cpu_has_bf16(info("fpu avx512f amx_bf16 amx_tile"))  # AMX (Sapphire Rapids)
    assert not backends.cpu_has_bf16(info("fpu sse avx2 avx512f avx512bw"))  # AVX-512 without bf16
    assert not backends.cpu_has_bf16(str(tmp_path / "missing"))  # unreadable (macOS): fp32


def test_prepare_model_lora_full_and_existing_adapter(tiny_policy):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, peft_cfg = backends.prepare_model(tiny_policy, SlowConfig(), "transformers")
    assert model is tiny_policy.model and isinstance(peft_cfg, LoraConfig)
    assert set(peft_cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (16, 32, 0.0)

    model, peft_cfg = backends.prepare_model(tiny_policy, SlowConfig(lora=False), "transformers")
    assert model is tiny_policy.model and peft_cfg is None
    assert all(p.requires_grad for p in model.parameters())

    wrapped = get_peft_model(tiny_policy.model, backends.lora_config(SlowConfig(lora_r=4)))
    pol = Policy(model=wrapped, tokenizer=tiny_policy.tokenizer)
    model, peft_cfg = backends.prepare_model(pol, SlowConfig(), "transformers")
    assert isinstance(model, PeftModel) and model is wrapped and peft_cfg is None


def test_generation_policy_hf_and_vllm_stub(tiny_policy):
    tok = tiny_policy.tokenizer
    trainer = SimpleNamespace(model=tiny_policy.model, eos_token_ids=[tok.eos_token_id])
    pol = backends.generation_policy(trainer, tiny_policy, SlowConfig(), "transformers")
    assert type(pol) is Policy and pol.model is tiny_policy.model and pol.autocast is None
    assert backends.generation_policy(trainer, tiny_policy, SlowConfig(precision="bf16"), "transformers").autocast == "bf16"

    calls = []

    def fake_generate(prompts, images, num_generations):
        calls.append((prompts, num_generations))
        outs = [tok("done", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], [5, 6, 7]]
        return prompts, outs[: len(prompts)], None, None

    trainer.vllm_generation = SimpleNamespace(generate=fake_generate)
    vpol = backends.generation_policy(trainer, tiny_policy, SlowConfig(use_vllm=True), "transformers")
    assert isinstance(vpol, backends.VLLMColocatePolicy)
    gens = vpol.generate_text(["<|im_start|>user\nhi<|im_end|>\n", "x"], max_new_tokens=4, temperature=1.0)
    assert len(calls) == 1 and calls[0][1] == 1  # every rollout keeps its own prompt: n=1 per prompt
    assert gens[0].text == "done" and gens[0].finished and gens[0].completion_ids[-1] == tok.eos_token_id
    assert not gens[1].finished and gens[1].completion_tokens == 3
