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
from typing import Any, Sequence

from fst_lab.loop_configs import SlowConfig
from fst_lab.models import Generation, Policy, cuda_available, import_unsloth, select_backend

log = logging.getLogger(__name__)


def resolve_backend(config: SlowConfig, policy: Policy | None = None) -> str:
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


BF16_MIN_HIDDEN = 512  # below this, bf16 matmul kernels' fixed cost outweighs the halved weight traffic on CPU


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 matmul instructions (x86 ``avx512_bf16`` or AMX), from ``/proc/cpuinfo``;
    False where that cannot be read (torch then runs bf16 matmuls by conversion, slower than float32)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(config: SlowConfig, backend: str, hidden: int | None = None) -> str:
    """The precision a learner trains in: ``config.precision``, with ``auto`` decided here.

    ``auto`` is ``bf16`` for LoRA with transformers on a CPU with bf16 instructions and a model whose hidden
    size is at least :data:`BF16_MIN_HIDDEN` (the embedded SmolLM2-135M: 576), else ``fp32``. Measured on the
    demo (docs/BENCHMARKS.md, CPU speed): bf16 steps are faster at 1 and 2 threads and learning stayed within
    the seeds' spread; at test-model sizes (hidden 32) the bf16 kernels' fixed cost makes them slower (an
    8x576 . 576x16 product: 28 us vs 6 us in float32). On CUDA ``auto`` is ``fp32`` as far as fst_lab goes
    (samplers without autocast, as before ``auto``): the trainer picks its own bf16/fp16 there (:func:`device_args`).
    """
    if config.precision != "auto":
        return config.precision
    if cuda_available():  # pragma: no cover - GPU only
        return "fp32"
    if config.lora and backend == "transformers" and cpu_has_bf16() and (hidden or 0) >= BF16_MIN_HIDDEN:
        return "bf16"
    return "fp32"


def device_args(backend: str, precision: str = "fp32") -> dict[str, Any]:
    """GRPOConfig flags for the device and precision.

    CPU: ``use_cpu=True``; ``bf16=True`` for precision "bf16" (autocast in bfloat16 with float32 master
    weights: transformers/accelerate support it on CPU), never fp16. CUDA: bf16 when the GPU supports
    it (fp16 otherwise), whatever ``precision`` says, as before.
    """
    if not cuda_available():
        return {"use_cpu": True, "bf16": precision == "bf16", "fp16": False}
    import torch  # pragma: no cover - GPU only

    bf16 = bool(torch.cuda.is_bf16_supported())  # pragma: no cover
    return {"use_cpu": False, "bf16": bf16, "fp16": not bf16}  # pragma: no cover


def cpu_trainer_setup(model, config: SlowConfig) -> None:
    """What a CPU learner does to its trainer's model once built: TRL's log-prob head scores only completion
    positions (:func:`score_completions_only_on_cpu`); under ``precision: bf16`` with LoRA, frozen linears stored
    in bf16 (:func:`store_frozen_linears_bf16`) and a bf16 KV cache (:func:`rotary_in_autocast_dtype`)."""
    score_completions_only_on_cpu()
    if config.precision == "bf16" and config.lora:
        store_frozen_linears_bf16(model)
        rotary_in_autocast_dtype(model)


# ---------------------------------------------------------------------------- bf16 weight storage (CPU)
def _bf16_linear_class():
    import torch

    class Bf16Linear(torch.nn.Linear):
        """An ``nn.Linear`` whose frozen weight is stored in bfloat16. Under autocast it is a plain Linear; outside
        it computes in bfloat16 and returns the input's dtype, so every caller keeps working."""

        def forward(self, x):
            w = self.weight
            out = torch.nn.functional.linear(x.to(w.dtype), w, None if self.bias is None else self.bias.to(w.dtype))
            return out if torch.is_autocast_enabled(x.device.type) or out.dtype == x.dtype else out.to(x.dtype)

    return Bf16Linear


_BF16_LINEAR = None


def store_frozen_linears_bf16(model) -> int:
    """``precision: bf16`` with LoRA on CPU: store every frozen ``nn.Linear`` weight (the base projections, the MLP
    and the LM head) in bfloat16, once; returns how many.

    Why: bf16 autocast over float32 weights re-casts every frozen weight at every forward (autocast caches casts
    only for weights that require grad), so each decoding step reads the float32 weights, writes bf16 copies and
    reads those: more memory traffic than float32 itself, and CPU decoding is bound by it. Stored in bf16, a
    decoding step reads half the bytes of float32. Trainable weights (LoRA adapters, their float32 masters and
    optimizer state), the embedding (so the residual stream stays float32 under autocast) and the norms stay
    float32. A tied LM head gets its own bf16 copy of the embedding matrix (the embedding itself is untouched).
    """
    import torch

    global _BF16_LINEAR
    if _BF16_LINEAR is None:
        _BF16_LINEAR = _bf16_linear_class()
    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and not mod.weight.requires_grad and mod.weight.dtype == torch.float32:
            mod.weight = torch.nn.Parameter(mod.weight.detach().to(torch.bfloat16), requires_grad=False)
            if mod.bias is not None and not mod.bias.requires_grad:
                mod.bias = torch.nn.Parameter(mod.bias.detach().to(torch.bfloat16), requires_grad=False)
            mod.__class__ = _BF16_LINEAR
            n += 1
    return n


def score_completions_only_on_cpu() -> bool:
    """Make TRL's fused LM head score only the completion positions on CPU, as it does on CUDA; True if applied.

    TRL computes the training and reference log-probs through a fused LM head (``add_fused_lm_head``: the
    projection to the vocabulary and the log-softmax in tiles). On devices without Triton it scores *every*
    position, prompt included, so the tile shapes stay fixed for graph compilers (Neuron); the prompt positions
    are masked out afterwards. On CPU nothing is compiled, and the prompt is most of each sequence (demo: ~1,260
    of ~1,500 positions), so the LM head's matmuls and its memory-bound log-softmax passes over ``[positions,
    49,152]`` tiles ran ~6x the positions the loss needs: a third of the CPU RL step. The completion positions
    get the same values either way (the tiles are row-independent). TRL decides this with one helper,
    ``trl.trainer.utils._use_triton`` (it also picks the fold kernel, but in ``trl.kernels``' own namespace,
    which stays as is); this rebinds that name in ``trl.trainer.utils`` to also answer yes for CPU.
    """
    try:
        import trl.trainer.utils as tu
    except ImportError:  # pragma: no cover - TRL is a dependency
        return False
    use_triton = getattr(tu, "_use_triton", None)
    if use_triton is None:  # another TRL: nothing to do (its fused head, if any, decides for itself)
        return False
    if getattr(use_triton, "fst_compact_cpu", False):
        return True

    def compact_here(device, _use_triton=use_triton) -> bool:
        return device.type == "cpu" or _use_triton(device)

    compact_here.fst_compact_cpu = True
    tu._use_triton = compact_here
    return True


def rotary_in_autocast_dtype(model) -> int:
    """Under autocast, make the model's rotary embeddings return cos/sin in the autocast dtype; returns how many
    rotary modules were hooked.

    Why: with the embedding kept float32 (see :func:`store_frozen_linears_bf16`) the rotary module returns float32
    cos/sin, so the rotated keys are float32; transformers' ``DynamicCache`` then stores keys *and* values in
    float32 (the empty cache layer takes the keys' dtype and ``cat`` promotes the bf16 values to it), and at every
    decoding step autocast casts the whole cache back to bf16 for attention. With bf16 cos/sin the cache stays
    bf16: half the bytes copied per step and no per-step cast. Attention sees the same bf16 keys and values as
    before, up to where the rotation is rounded. Outside autocast (the KL probe, merged copies) nothing changes.
    """
    import torch

    def to_autocast_dtype(module, args, out):
        if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
            dev = out[0].device.type
            if torch.is_autocast_enabled(dev):
                dt = torch.get_autocast_dtype(dev)
                return tuple(t.to(dt) if torch.is_tensor(t) and t.is_floating_point() else t for t in out)
        return None

    n = 0
    for mod in model.modules():
        if type(mod).__name__.endswith("RotaryEmbedding") and not getattr(mod, "_fst_autocast_rotary", False):
            mod.register_forward_hook(to_autocast_dtype)
            mod._fst_autocast_rotary = True
            n += 1
    return n


class float32_linears:
    """Context: the bf16-stored linears of :func:`store_frozen_linears_bf16` computed from float32 copies of their
    weights (exactly the stored values, upcast), restored afterwards. For measurements that must not carry bf16
    rounding (the KL probe); costs one float32 copy of those weights while inside."""

    def __init__(self, model):
        self.model, self.saved = model, []

    def __enter__(self):
        import torch

        if _BF16_LINEAR is None:
            return self
        for mod in self.model.modules():
            if isinstance(mod, _BF16_LINEAR) and mod.weight.dtype == torch.bfloat16:
                self.saved.append((mod, mod.weight, mod.bias))
                mod.weight = torch.nn.Parameter(mod.weight.float(), requires_grad=False)
                if mod.bias is not None:
                    mod.bias = torch.nn.Parameter(mod.bias.float(), requires_grad=False)
        return self

    def __exit__(self, *exc):
        for mod, w, b in self.saved:
            mod.weight, mod.bias = w, b
        self.saved = []


def lora_config(config: SlowConfig):
    """The PEFT LoRA config (dropout 0: dropout would make the logprobs of generation and training differ)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def prepare_model(policy: Policy, config: SlowConfig, backend: str):
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


def generation_policy(trainer, policy: Policy, config: SlowConfig, backend: str) -> Policy:
    """What rollouts sample from during RL: the live trained model through HF ``generate`` (CPU / default),
    or TRL's colocated vLLM engine when ``config.use_vllm``. Under ``bf16`` the sampler runs under the
    same bfloat16 autocast as the trainer's forward, so sampling and training see the same numerics."""
    model = trainer.model  # unwrapped (DDP wraps model_wrapped); generating needs no gradient sync
    if config.use_vllm:  # pragma: no cover - GPU only
        return VLLMColocatePolicy(model=model, tokenizer=policy.tokenizer, name=policy.name, path=policy.path,
                                  backend=backend, trainer=trainer)
    autocast = "bf16" if resolve_precision(config, backend, hidden_size(model)) == "bf16" else None
    return Policy(model=model, tokenizer=policy.tokenizer, name=policy.name, path=policy.path, backend=backend,
                  autocast=autocast)


def hidden_size(model) -> int | None:
    """The (text) hidden size of an HF or PEFT model, None when it has no config (what ``auto`` precision reads)."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(cfg, "hidden_size", None)


# ---------------------------------------------------------------------------- views of the start weights
def reference(peft_model):
    """Context in which a PEFT model computes the start weights, as TRL's KL reference does: the frozen
    "ref" adapter when TRL made one (training continued an existing adapter), else adapters disabled."""
    from trl.trainer.utils import use_adapter

    return use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None)


class AdapterDisabled:
    """A model view that runs a PEFT model as its start weights (:func:`reference`), without a copy."""

    def __init__(self, peft_model):
        self._m = peft_model

    def generate(self, *args, **kwargs):
        with reference(self._m):
            return self._m.generate(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        with reference(self._m):
            return self._m(*args, **kwargs)

    def parameters(self):
        return self._m.parameters()

    @property
    def training(self) -> bool:
        return self._m.training

    def eval(self):
        self._m.eval()
        return self

    def train(self, mode: bool = True):
        self._m.train(mode)
        return self

    @property
    def config(self):
        return self._m.config

    @property
    def generation_config(self):
        return self._m.generation_config


def fresh_copy(model):
    """An independent, frozen copy of a (non-PEFT) HF model, built from its config (never deepcopy: a model
    TRL has patched would keep calling the original's forward)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    missing, unexpected = m.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:  # pragma: no cover - defensive
        raise RuntimeError(f"copy of the start weights failed: missing={missing[:3]} unexpected={unexpected[:3]}")
    m.tie_weights()
    m.to(next(model.parameters()).device)
    m.eval().requires_grad_(False)
    return m


def install_copy_guard(module) -> None:
    """TRL patches ``forward`` on the model instance with a closure over the *original* module's forward,
    so ``copy.deepcopy`` of a trained model would silently run the original's weights. This makes a
    deep copy drop the patch (the copy gets its class's plain forward)."""
    import copy

    if "forward" not in module.__dict__ or "__deepcopy__" in module.__dict__:
        return

    def __deepcopy__(memo, _m=module):
        saved = {k: _m.__dict__.pop(k) for k in ("forward", "__deepcopy__") if k in _m.__dict__}
        try:
            return copy.deepcopy(_m, memo)
        finally:
            _m.__dict__.update(saved)

    module.__dict__["__deepcopy__"] = __deepcopy__


def load_weights(model, directory, *, lora: bool) -> None:
    """Load weights saved with ``save_pretrained`` (safetensors) into ``model`` in place, so an optimizer
    keeps pointing at the same parameters: the LoRA adapter (PEFT format) or the full model."""
    from pathlib import Path

    from safetensors.torch import load_file

    d = Path(directory)
    if lora:
        from peft import set_peft_model_state_dict

        f = d / "adapter_model.safetensors"
        if not f.exists():
            raise FileNotFoundError(f"{f} not found (save it with save_adapter)")
        res = set_peft_model_state_dict(model, load_file(str(f)))
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
        if bad:
            raise ValueError(f"{f}: adapter does not match this model (unexpected keys {bad[:3]})")
    else:
        f = d / "model.safetensors"
        if not f.exists():
            raise FileNotFoundError(f"{f} not found (save it with save_adapter)")
        missing, unexpected = model.load_state_dict(load_file(str(f)), strict=False)
        missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"{f}: weights don't match (missing {missing[:3]}, unexpected {unexpected[:3]})")
