"""What a config will do, before anything is loaded: ``fst-lab run --dry-run CONFIG``.

    >>> from fst_lab.config import FSTConfig
    >>> from fst_lab.plan import describe_plan
    >>> print(describe_plan(FSTConfig.load("configs/paper/codeio.yaml")))

:func:`describe_plan` reads only the config (no model, no task data, no torch import) and prints the
schedule (cycles, RL steps, fast rounds, stages), the rollout counts (per RL step, per GEPA round,
total), the reflection calls, and a rough GPU-memory estimate for the named model size.

Configs may leave the policy and the reflection model as placeholders (values starting with
:data:`PLACEHOLDER`, as ``configs/paper/*.yaml`` do): a dry run accepts them and says so;
:func:`refuse_placeholders` raises a :class:`ConfigError` naming the field, for ``run`` to call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fst_lab.config import ConfigError, FSTConfig
from fst_lab.schedule import stage_harness_name

PLACEHOLDER = "FILL_IN"  # e.g. `model: FILL_IN/policy`, `fast: {reflection_lm: FILL_IN/reflection-model}`
GIB = 2**30

# Assumptions of the memory estimate (stated in its output).
PROMPT_TOKENS = 1024  # harness prefix (system prompt + few-shot + tools) + problem, per rollout
VOCAB = 152_000  # logits width (Qwen-sized vocabularies; SmolLM2's is 49k)
EXAMPLE_SIZES = (1.7e9, 4e9, 8e9, 14e9)  # shown when the model is a placeholder or its size unknown


# ---------------------------------------------------------------------------- placeholders
def placeholders(config: FSTConfig) -> list[str]:
    """Field paths whose value is still a placeholder (``model``, ``fast.reflection_lm``, ...)."""
    out = []
    if str(config.model).startswith(PLACEHOLDER):
        out.append("model")
    if str(config.fast.reflection_lm).startswith(PLACEHOLDER):
        out.append("fast.reflection_lm")
    if config.fast.api_base and str(config.fast.api_base).startswith(PLACEHOLDER):
        out.append("fast.api_base")
    return out


def refuse_placeholders(config: FSTConfig, source: str | None = None) -> None:
    """Raise :class:`ConfigError` if the config still holds a placeholder (a real run needs real models)."""
    missing = placeholders(config)
    if missing:
        path = missing[0]
        value = config.model if path == "model" else getattr(config.fast, path.split(".", 1)[1])
        hint = ("a local path or a cached HF id, e.g. Qwen/Qwen3-8B" if path == "model" else
                "a LiteLLM model string, e.g. openai/gpt-4.1-mini or anthropic/claude-sonnet-4-5")
        more = f" (also: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"'{value}' is a placeholder: set it to {hint}{more}; `fst-lab run --dry-run` shows "
                          "the plan without it", path=path, source=source)


# ---------------------------------------------------------------------------- model size
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def model_params(name: str) -> float | None:
    """Parameter count from a model name: ``"Qwen/Qwen3-8B"`` -> 8e9, ``"SmolLM2-135M"`` -> 1.35e8.

    The last size token wins (``Qwen2.5-Coder-1.5B`` -> 1.5e9); mixture-of-experts names such as
    ``Qwen3-30B-A3B`` count the total (30e9), which is what must fit in memory. None if no size is named.
    """
    from fst_lab.models import EMBEDDED, DEFAULT_MODEL  # cheap: models.py imports torch lazily

    if name in EMBEDDED or name == DEFAULT_MODEL:
        name = "SmolLM2-135M"
    hits = _SIZE.findall(str(name).rsplit("/", 1)[-1])
    if not hits:
        return None
    sizes = [float(v) * (1e9 if u in "bB" else 1e6) for v, u in hits]
    # "30B-A3B": active experts are named after the total; the total is what has to fit.
    return max(sizes) if re.search(r"-A\d", str(name)) else sizes[-1]


@dataclass
class MemoryEstimate:
    params: float
    weights: float
    trainable: float
    optimizer: float
    reference: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return (self.weights + self.trainable + self.optimizer + self.reference + self.kv_cache
                + self.activations)


def estimate_memory(params: float, config: FSTConfig) -> MemoryEstimate:
    """A rough peak GPU memory (bytes) for one RL step of ``config`` with a ``params``-parameter model.

    Shape from the size (dense decoder, grouped-query attention with 4x fewer KV heads):
    hidden d = 0.45 * N^0.4, layers L = N / (12 d^2) (Qwen3-8B: d 4096, L 36; this gives 4.1k, 40).
    - weights: 2 bytes/param (bf16);
    - LoRA (q,k,v,o, rank r): 8 r d L trainable params, each 4 (fp32) + 4 (grad) bytes, + 8 (AdamW m, v);
      full fine-tuning: 2 (grad) + 12 (fp32 master copy, m, v) bytes/param;
    - reference model for beta > 0: none with LoRA (the adapter-disabled base), 2 bytes/param otherwise;
    - KV cache of one generate() batch: rollout_batch_size sequences of (PROMPT_TOKENS + new tokens),
      L * d bytes per token (k and v, bf16, KV width d/4);
    - training activations of one micro-batch: 34 d bytes per token per layer (no recomputation;
      gradient checkpointing keeps ~2 d per layer) + fp32 logits (4 * VOCAB bytes per token).
    Framework overheads, fragmentation and vLLM's own pool (``vllm_gpu_memory_utilization``) come on top.
    """
    s = config.slow
    d = 0.45 * params ** 0.4
    layers = max(1.0, params / (12 * d * d))
    new = s.max_completion_length or config.max_new_tokens or 512
    seq = PROMPT_TOKENS + new
    if s.lora:
        trainable_n = 8 * s.lora_r * d * layers * len(s.lora_target_modules) / 4
        trainable, optimizer, reference = trainable_n * 8, trainable_n * 8, 0.0
    else:
        trainable, optimizer = params * 2, params * 12
        reference = params * 2 if s.beta > 0 else 0.0
    per_process = s.prompts_per_step * s.num_generations
    micro = s.micro_batch_size or per_process
    kv = min(s.rollout_batch_size, per_process) * seq * layers * d
    act_per_layer = (2 if s.gradient_checkpointing else 34) * d
    activations = micro * seq * (act_per_layer * layers + 4 * VOCAB)
    return MemoryEstimate(params, params * 2, trainable, optimizer, reference, kv, activations)


# ---------------------------------------------------------------------------- the plan
def _stage_lines(config: FSTConfig, rl_steps: int) -> list[str]:
    stages = config.stage_list()
    lines, start = [], 0
    for i, st in enumerate(stages):
        steps = st.steps if st.steps is not None else max(0, rl_steps - start)
        end = start + steps
        lines.append(f"    {i + 1}. {st.task} (level {st.level}), RL steps {start + 1}-{end}, seed harness "
                     f"{stage_harness_name(config, i)}")
        start = end
    if len(stages) > 1 and start != rl_steps:
        lines.append(f"    note: the stages add up to {start} RL steps but the schedule has {rl_steps}")
    return lines


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB" if x >= GIB / 10 else f"{x / 2**20:.0f} MiB"


def describe_plan(config: FSTConfig) -> str:
    """A human-readable plan of ``config``: schedule, rollouts, reflection calls, GPU memory. Loads nothing."""
    f, s = config.fast, config.slow
    plan = config.cycle_plan()
    cycles = config.cycles
    n_w, n_p, n_c = plan.count("w"), plan.count("p"), plan.count("c")
    rl_steps, rounds = cycles * n_w, cycles * n_p
    G, K, P = s.num_generations, s.population_size, s.prompts_per_step
    per_step = P * G
    n_train, n_val = config.fast_train_size, config.fast_val_size
    budget = f.budget(n_train, n_val)
    rescore = K * n_val  # the previous population re-scored under the current weights (at most K members)
    per_round = rescore + budget
    # Each GEPA iteration spends a minibatch on the parent and one on the child; an accepted child also
    # runs on the whole validation set. Upper bound on proposals: all rejected.
    m = min(f.reflection_minibatch_size, n_train)
    proposals = max(0, (budget - n_val) // (2 * m))
    reflective = proposals if not f.bootstrap or f.bootstrap_every == 0 else \
        proposals - (proposals + f.bootstrap_every - 1) // f.bootstrap_every
    evals = (cycles if config.eval_every_cycle else 0) * config.eval_size * config.eval_k
    total = rl_steps * per_step + rounds * per_round + evals
    lines = [f"plan of a {config.mode} run (dry run: nothing loaded)",
             f"  policy: {config.model}" + ("   <- placeholder: set it before `run`" if "model" in placeholders(config) else ""),
             f"  reflection LM: {f.reflection_lm}" + (f" at {f.api_base}" if f.api_base else "") +
             ("   <- placeholder: set it before `run`" if "fast.reflection_lm" in placeholders(config) else ""),
             f"  schedule per cycle: {' -> '.join(plan)}  (T={n_w} RL steps, {n_p} GEPA round(s)"
             + (f", {n_c} consolidation step(s)" if n_c else "") + ")",
             f"  cycles: {cycles}   RL steps: {rl_steps}   GEPA rounds: {rounds}",
             "  stages:", *_stage_lines(config, rl_steps),
             "slow loop (RL)",
             f"  loss {s.loss_type} (tau={s.epsilon_high}), beta={s.beta}, AdamW {s.adam_beta1}/{s.adam_beta2}/"
             f"{s.adam_epsilon:g}, lr {s.learning_rate:g}, warm-up {s.warmup_steps} steps, grad clip "
             f"{s.max_grad_norm or 'off'}, {'LoRA r=' + str(s.lora_r) if s.lora else 'full fine-tuning'}",
             f"  rollouts per RL step: {P} problems x G={G} = {per_step} (G/K = {G // K} per harness, K={K})",
             f"  max new tokens per turn: {s.max_completion_length or 'harness default'}",
             "fast loop (GEPA)",
             f"  per round: {n_train} train / {n_val} val examples, budget {budget} rollouts "
             f"(budget_passes={f.budget_passes:g}" + (f", max_metric_calls={f.max_metric_calls}" if f.max_metric_calls else "")
             + f") + re-scoring <= {rescore} = <= {per_round} rollouts",
             f"  proposals per round: <= {proposals} ({reflective} reflective, {proposals - reflective} bootstrap)",
             f"  reflection calls: <= {reflective} per round, <= {reflective * rounds} in all",
             "totals",
             f"  rollouts: {rl_steps * per_step:,} RL + <= {rounds * per_round:,} GEPA + {evals:,} evaluation "
             f"= <= {total:,}"]
    lines += _memory_lines(config)
    return "\n".join(lines)


def _memory_lines(config: FSTConfig) -> list[str]:
    s = config.slow
    n = None if "model" in placeholders(config) else model_params(config.model)
    out = ["GPU memory (rough; bf16 weights, see fst_lab.plan.estimate_memory for the formula)"]
    sizes = [n] if n else list(EXAMPLE_SIZES)
    if not n:
        out.append(f"  model size not named in '{config.model}': estimates for common sizes")
    for p in sizes:
        e = estimate_memory(p, config)
        out.append(f"  {p / 1e9:.3g}B params: ~{_gib(e.total)} = weights {_gib(e.weights)} + "
                   f"{'LoRA' if s.lora else 'grads+optimizer'} {_gib(e.trainable + e.optimizer)}"
                   + (f" + reference {_gib(e.reference)}" if e.reference else "")
                   + f" + KV cache {_gib(e.kv_cache)} + activations {_gib(e.activations)}")
    out.append(f"  assumes {PROMPT_TOKENS}-token prompts, a {VOCAB // 1000}k vocabulary, micro-batch "
               f"{s.micro_batch_size or s.prompts_per_step * s.num_generations} completions"
               + ("" if not s.use_vllm else f"; vLLM colocate takes {s.vllm_gpu_memory_utilization:.0%} of the GPU on top"))
    return out
