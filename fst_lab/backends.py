"""Training backends for the slow loop: transformers + PEFT everywhere, Unsloth (+ vLLM colocate) on CUDA.

The slow loop (:mod:`fst_lab.slow`) talks to one small surface, so the same ``SlowLearner`` runs on a
laptop CPU and on a GPU box:

    >>> backend = resolve_backend(config)                 # "transformers" | "unsloth" (never imports unsloth on CPU)
    >>> model = prepare_model(policy, config, backend)    # LoRA adapter (PEFT / Unsloth) or the full model
    >>> kwargs = device_args(backend)                     # GRPOConfig device/precision flags
    >>> gen = generation_policy(trainer, policy, config)  # what rollouts sample from (HF generate or vLLM)

Unsloth raises ``NotImplementedError`` at import time on a machine without a GPU, so nothing here
imports it unless CUDA is visible (``fst_lab.models.import_unsloth`` guards the import). vLLM is
imported only by TRL, only when ``use_vllm=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from fst_lab.models import Generation, Policy, cuda_available, import_unsloth, select_backend

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.slow import SlowConfig

log = logging.getLogger(__name__)


def resolve_backend(config: "SlowConfig", policy: Policy | None = None) -> str:
    """``"unsloth"`` when CUDA and unsloth are present (or asked for), else ``"transformers"``.

    Decided from ``torch.cuda.is_available()`` and ``importlib.util.find_spec`` only: unsloth is not
    imported here (importing it on CPU raises). With ``backend="auto"`` the policy's own loader decides:
    a model loaded by transformers is trained with PEFT even on a GPU box with unsloth installed
    (Unsloth's ``get_peft_model`` expects a model loaded by ``FastLanguageModel``).
    """
    which = select_backend(config.backend)
    if config.backend in (None, "auto") and policy is not None and policy.backend != "unsloth":
        return "transformers"
    if which == "unsloth" and policy is not None and policy.backend != "unsloth":
        raise ValueError("backend 'unsloth' needs a policy loaded by Unsloth: "
                         "load_policy(name, backend='unsloth') on a CUDA machine")
    return which


def device_args(backend: str) -> dict[str, Any]:
    """GRPOConfig flags for the device: CPU needs ``use_cpu=True`` and no half precision (TRL's defaults
    raise on CPU); on CUDA, bf16 when the GPU supports it."""
    if not cuda_available():
        return {"use_cpu": True, "bf16": False, "fp16": False}
    import torch  # pragma: no cover - GPU only

    bf16 = bool(torch.cuda.is_bf16_supported())  # pragma: no cover
    return {"use_cpu": False, "bf16": bf16, "fp16": not bf16}  # pragma: no cover


def lora_config(config: "SlowConfig"):
    """The PEFT LoRA config (dropout 0: dropout would make the logprobs of generation and training differ)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def prepare_model(policy: Policy, config: "SlowConfig", backend: str):
    """``(model, peft_config)`` for ``GRPOTrainer(model=..., peft_config=...)``.

    transformers: the plain model plus a LoRA config, so TRL wraps it (a fresh adapter; TRL's KL
    reference is then the adapter-disabled model). Unsloth: wrapped here by
    ``FastLanguageModel.get_peft_model``. A model that already is a PEFT model continues training its
    active adapter (TRL then keeps a frozen "ref" copy of it as the KL reference). Full fine-tuning:
    the model itself. LoRA layers are injected in place, so ``policy.model`` is the trained model.
    """
    model = policy.model
    if not config.lora:
        model.requires_grad_(True)
        return model, None
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model, None
    if backend == "unsloth":  # pragma: no cover - needs CUDA + unsloth
        if import_unsloth() is None:
            raise RuntimeError("backend 'unsloth' was selected but unsloth failed to import (see the log)")
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules), bias="none",
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
            random_state=config.seed), None
    return model, lora_config(config)


@dataclass
class VLLMColocatePolicy(Policy):
    """A :class:`Policy` whose text generation runs on TRL's colocated vLLM engine.

    Every prompt is sent on its own (``n=1``), so each rollout keeps its own harness-rendered prompt;
    that is why *server* mode (one prompt, ``n=G``) is refused by :class:`~fst_lab.slow.SlowConfig`.
    Sampling settings are the trainer's (temperature, ``max_completion_length`` per turn); TRL pushes the
    current weights into vLLM before each rollout. Multi-turn rollouts call this once per turn and per
    process, so keep ``vllm_tensor_parallel_size=1`` (TP ranks would have to call in lockstep).
    """

    trainer: Any = field(default=None, repr=False)

    def generate_text(self, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                      top_p: float = 1.0, seed: int | None = None,
                      batch_size: int = 16) -> list[Generation]:  # pragma: no cover - GPU only
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        _, completion_ids, _, _ = self.trainer.vllm_generation.generate(prompts=ids, images=None, num_generations=1)
        out = []
        for p_ids, c_ids in zip(ids, completion_ids):
            c_ids = list(c_ids)
            finished = bool(c_ids) and c_ids[-1] in self.trainer.eos_token_ids
            out.append(Generation(text=tok.decode(c_ids, skip_special_tokens=True), prompt_tokens=len(p_ids),
                                  completion_tokens=len(c_ids), finished=finished, completion_ids=c_ids))
        return out


def generation_policy(trainer, policy: Policy, config: "SlowConfig", backend: str) -> Policy:
    """What rollouts sample from during RL: the live trained model through HF ``generate`` (CPU / default),
    or TRL's colocated vLLM engine when ``config.use_vllm``."""
    model = trainer.model  # unwrapped (DDP wraps model_wrapped); generating needs no gradient sync
    if config.use_vllm:  # pragma: no cover - GPU only
        return VLLMColocatePolicy(model=model, tokenizer=policy.tokenizer, name=policy.name, path=policy.path,
                                  backend=backend, trainer=trainer)
    return Policy(model=model, tokenizer=policy.tokenizer, name=policy.name, path=policy.path, backend=backend)
