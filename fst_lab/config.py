"""One documented config for a whole FST run (YAML file <-> dataclass), baselines one flag away.

    mode: fst            # fst | rl (fixed seed harness) | gepa (frozen weights)
    task: math
    cycles: 2
    steps_per_cycle: 6   # T (paper App. D)
    population_size: 4   # K (paper App. D)
    num_generations: 8   # G (paper App. D); K must divide G
    schedule: "p -> w*6" # optional: per-cycle recipe, DSPy-BetterTogether style
    fast: {budget_passes: 3}        # FastConfig: the GEPA round
    slow: {learning_rate: 1.0e-4}   # SlowConfig: the RL step

Schedules: a cycle is a sequence of ``p`` (a fast/prompt step: one GEPA round), ``w`` (a slow/weights
step: one RL optimizer step) and ``c`` (a consolidation step), joined by ``->``; ``w*6`` repeats.
Defaults per mode: fst ``p -> w*T``, rl ``w*T``, gepa ``p`` (gepa freezes the weights: no ``w``, no ``c``).

Stated once: K (``population_size``), G (``num_generations``), ``seed``, ``max_new_tokens``,
``prompts_per_step`` and ``report_to`` live at the top level and flow into both ``fast`` and ``slow``;
repeating one there with another value is refused. ``FSTConfig.fast`` / ``.slow`` are the typed
:class:`FastConfig` / :class:`SlowConfig` the loops run with.

Every mistake is refused before anything is written, as a :class:`ConfigError` naming file, line and
field: ``c.yaml:9: fast.budget_pases: unknown key; did you mean budget_passes?``.

Continual learning: ``stages`` is a list of ``{task, level, steps}``; the run switches task after each
stage's RL steps (paper: HoVer -> CodeIO -> Physics every 200 steps, task-agnostic seed harness).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fst_lab.errors import FstLabError

MODES = ("fst", "rl", "gepa")


class ConfigError(FstLabError, ValueError):
    """The run config is invalid. ``str(e)`` is ``[file[:line]: ][field.path: ]message`` on one line.

    ``path`` is the field (``fast.budget_passes``, ``stages[1].task``); ``source``/``line`` say where it
    came from when the config was loaded from a file.
    """

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None,
                 line: int | None = None):
        self.message, self.path, self.source, self.line = message, path, source, line
        where = f"{source}:{line}" if source and line else (source or "")
        super().__init__(": ".join(p for p in (where, path, message) if p))

    def located(self, source: str | None, lines: dict[str, int] | None = None) -> "ConfigError":
        """The same error, placed in ``source`` at the line of its field (or the nearest enclosing one)."""
        if self.source is not None or source is None:
            return self
        line, path = None, self.path
        while path and lines and line is None:
            line = lines.get(path)
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else None
        return ConfigError(self.message, path=self.path, source=source, line=line)


def _f(default, help: str, **kw):
    """A dataclass field with help text (``metadata["help"]``, as in TRL's configs)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


CANDIDATE_SELECTIONS = ("pareto", "current_best", "epsilon_greedy", "top_k_pareto")
LOSS_TYPES = ("cispo", "grpo", "dapo", "dr_grpo")
VLLM_MODES = ("colocate", "server")


@dataclass
class FastConfig:
    """Settings of one fast step (one GEPA round).

    Population:
        population_size, candidate_selection
    Budget:
        budget_passes, max_metric_calls, max_reflection_cost, reflection_minibatch_size
    Reflection LM (LiteLLM):
        reflection_lm, api_base, api_key_env, reflection_temperature, reflection_max_tokens,
        reflection_timeout, reflection_retries
    Bootstrapped demos:
        bootstrap, bootstrap_every, max_demos, demo_min_reward
    Rollouts:
        temperature, max_new_tokens, seed
    """

    population_size: int = field(default=4, metadata={"help": (
        "K, harnesses kept after the round (paper App. D: K=4). The slow loop splits each problem's G "
        "rollouts G/K per harness, so K must divide G there.")})
    budget_passes: float = field(default=5.0, metadata={"help": (
        "GEPA budget in passes over this cycle's training examples (paper App. D: ~5 passes, one "
        "rollout per (task, harness)): max_metric_calls = budget_passes * len(train_examples), raised "
        "if needed so that at least one proposal fits after the seed's validation run.")})
    max_metric_calls: int | None = field(default=None, metadata={"help": (
        "Exact GEPA budget in rollouts (train minibatches + validation runs); overrides budget_passes.")})
    max_reflection_cost: float | None = field(default=None, metadata={"help": (
        "Stop the round once the reflection LM has cost this many USD (LiteLLM's price table).")})
    reflection_lm: str = field(default="fst-local/policy", metadata={"help": (
        "LiteLLM model string of the reflection LM ('openai/gpt-4.1-mini', 'ollama/qwen3:8b', "
        "'hosted_vllm/<model>' with api_base, ...). 'fst-local/policy' (default, offline) is the current "
        "policy itself, served in-process; the paper uses a frozen frontier model.")})
    api_base: str | None = field(default=None, metadata={"help": (
        "Base URL for self-hosted OpenAI-compatible servers (vLLM, Ollama, transformers serve).")})
    api_key_env: str | None = field(default=None, metadata={"help": (
        "Name of the environment variable holding the API key (the key itself is never stored in a "
        "config). Unset: LiteLLM reads the provider's usual variable, e.g. OPENAI_API_KEY.")})
    reflection_temperature: float | None = field(default=None, metadata={"help": (
        "Sampling temperature of the reflection LM (None = provider default; the local one is greedy).")})
    reflection_max_tokens: int | None = field(default=None, metadata={"help": (
        "Reply length cap of the reflection LM (None = provider default; 256 for fst-local).")})
    reflection_timeout: float = field(default=60.0, metadata={"help": "Seconds per reflection LM attempt."})
    reflection_retries: int = field(default=3, metadata={"help": (
        "Retries after a timeout, 429, 5xx or connection error; then the proposal is dropped.")})
    reflection_minibatch_size: int = field(default=3, metadata={"help": (
        "Training problems per GEPA proposal: rolled out with the parent, shown to the reflection LM, "
        "and rolled out again with the child for GEPA's acceptance test (GEPA's default: 3).")})
    candidate_selection: str = field(default="pareto", metadata={"help": (
        "How GEPA picks the parent of each proposal: pareto | current_best | epsilon_greedy | top_k_pareto.")})
    bootstrap: bool = field(default=True, metadata={"help": (
        "Also propose few-shot demos bootstrapped from the policy's own successful training rollouts "
        "(needs 'few_shot' among the harness's evolvable components).")})
    bootstrap_every: int = field(default=2, metadata={"help": (
        "Bootstrap on the 1st, (n+1)-th, (2n+1)-th ... proposal and reflect on the others (1 = always "
        "bootstrap); 0 = bootstrap only when GEPA's round-robin selects the few_shot component. A "
        "bootstrap turn with no usable demo falls back to reflection.")})
    max_demos: int = field(default=2, metadata={"help": "Demos per bootstrapped few_shot component."})
    demo_min_reward: float = field(default=1.0, metadata={"help": (
        "A trajectory becomes a demo only with at least this reward.")})
    temperature: float | None = field(default=None, metadata={"help": (
        "Rollout temperature while evaluating harnesses (None = each harness's loop.temperature).")})
    max_new_tokens: int | None = field(default=None, metadata={"help": (
        "Per-turn token cap while evaluating (None = each harness's loop.max_new_tokens).")})
    seed: int = field(default=0, metadata={"help": "Seed of GEPA's sampling and of rollout sampling."})
    use_merge: bool = field(default=False, metadata={"help": "Enable GEPA's merge proposer."})

    def __post_init__(self):
        if self.population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {self.population_size}")
        if self.max_metric_calls is None and not self.budget_passes > 0:
            raise ValueError(f"budget_passes must be > 0, got {self.budget_passes}")
        if self.max_metric_calls is not None and self.max_metric_calls < 1:
            raise ValueError(f"max_metric_calls must be >= 1, got {self.max_metric_calls}")
        if self.candidate_selection not in CANDIDATE_SELECTIONS:
            raise ValueError(f"candidate_selection must be one of {CANDIDATE_SELECTIONS}, "
                             f"got {self.candidate_selection!r}")
        if self.reflection_minibatch_size < 1:
            raise ValueError(f"reflection_minibatch_size must be >= 1, got {self.reflection_minibatch_size}")
        if self.bootstrap_every < 0:
            raise ValueError(f"bootstrap_every must be >= 0, got {self.bootstrap_every}")
        if self.max_demos < 1:
            raise ValueError(f"max_demos must be >= 1, got {self.max_demos}")
        if self.reflection_retries < 0:
            raise ValueError(f"reflection_retries must be >= 0, got {self.reflection_retries}")
        if "/" not in self.reflection_lm:
            raise ValueError(f"reflection_lm must be a LiteLLM 'provider/model' string, got {self.reflection_lm!r}")

    def budget(self, n_train: int, n_val: int) -> int:
        """GEPA's max_metric_calls for a round with these example counts."""
        if self.max_metric_calls is not None:
            return int(self.max_metric_calls)
        passes = int(math.ceil(self.budget_passes * n_train))
        # The seed's validation run comes first; leave room for at least one proposal after it.
        return max(passes, n_val + 2 * min(self.reflection_minibatch_size, max(1, n_train)))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)



@dataclass
class SlowConfig:
    """Settings of the slow loop. Defaults cite their source: "paper" = *Learning, Fast and Slow* (arXiv
    2605.12484) as read from its App. D by a third party; "ours" = chosen for this project.

    Loss & objective: ``loss_type``, ``epsilon_high``, ``epsilon``, ``beta``, ``scale_rewards``,
    ``drop_zero_variance_groups``.
    Optimiser: ``learning_rate``, ``adam_beta1``, ``adam_beta2``, ``adam_epsilon``, ``weight_decay``,
    ``warmup_steps``, ``max_grad_norm``.
    Batch: ``num_generations`` (G), ``population_size`` (K), ``prompts_per_step``, ``micro_batch_size``.
    Sampling: ``max_completion_length``, ``temperature``, ``rollout_batch_size``.
    Weights: ``lora``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``,
    ``gradient_checkpointing``, ``precision``.
    Backend: ``backend``, ``use_vllm``, ``vllm_mode``, ``vllm_gpu_memory_utilization``.
    Bookkeeping: ``seed``, ``report_to``, ``kl_probe_size``.
    """

    loss_type: str = _f("cispo", "Policy loss: cispo | grpo | dapo | dr_grpo (TRL's implementations). Paper: CISPO.")
    epsilon_high: float = _f(4.0, "CISPO: the cap tau on the importance ratio, sg(min(rho, tau)), no lower bound "
                                  "(paper: tau = 4.0). For grpo/dapo/dr_grpo it is the upper clip epsilon "
                                  "(DAPO uses 0.28): change it when you change loss_type.")
    epsilon: float = _f(0.2, "Lower clip epsilon for grpo/dapo/dr_grpo (TRL default); unused by CISPO.")
    beta: float = _f(0.001, "KL coefficient to the start weights (paper: 0.001). With LoRA the reference is the "
                            "adapter-disabled model; with full fine-tuning a frozen copy. 0 disables the KL term.")
    scale_rewards: str = _f("group", "Advantage scaling: 'group' divides by the group's std, A = (r - mean_g) / "
                                     "(std_g + eps) (paper); 'batch' or 'none' as in TRL.")
    drop_zero_variance_groups: bool = _f(True, "Problems whose G rewards are all equal carry no signal and are "
                                               "dropped from the loss and its token count (paper).")
    learning_rate: float = _f(2e-5, "AdamW learning rate (ours: mid-range for LoRA RL on a 135M model; the paper's "
                                    "rate is for its own model size).")
    adam_beta1: float = _f(0.9, "AdamW beta1 (paper App. D).")
    adam_beta2: float = _f(0.999, "AdamW beta2 (paper App. D).")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon (paper App. D).")
    weight_decay: float = _f(0.0, "AdamW weight decay (paper App. D).")
    warmup_steps: int = _f(10, "Linear warm-up steps, then a constant rate (paper App. D: 10). The first step "
                               "runs at rate 0, as in transformers' schedules.")
    max_grad_norm: float | None = _f(0.0, "Gradient clipping norm; 0 disables it (paper: no clipping). HF's Trainer clips "
                                   "only when > 0 (None would crash its comparison).")
    num_generations: int = _f(8, "G: rollouts per problem (paper: 8).")
    population_size: int = _f(4, "K: harnesses in the population; each gets G/K rollouts of every problem (paper: "
                                 "4). Must divide G.")
    prompts_per_step: int = _f(4, "Problems per optimizer step (ours: CPU-sized). Each step trains on "
                                  "prompts_per_step * G completions; must divide by the number of processes.")
    micro_batch_size: int | None = _f(None, "Completions per forward/backward pass on each process; smaller values "
                                            "trade speed for memory via gradient accumulation. None: all of them "
                                            "at once. Must divide the per-process completions.")
    max_completion_length: int | None = _f(None, "New tokens per model turn during RL. None: each harness's "
                                                 "loop.max_new_tokens.")
    temperature: float = _f(1.0, "Sampling temperature for RL rollouts (paper: 1.0); also the temperature TRL "
                                 "divides logits by in the loss, so the two stay consistent.")
    rollout_batch_size: int = _f(32, "Sequences per generate() call in rollouts (ours; memory knob).")
    lora: bool = _f(True, "Train a LoRA adapter (True) or all weights (False, full fine-tuning).")
    lora_r: int = _f(16, "LoRA rank (ours; a common default).")
    lora_alpha: int = _f(32, "LoRA alpha (ours: 2 * r).")
    lora_dropout: float = _f(0.0, "LoRA dropout (ours: 0, so generation and training logprobs agree).")
    lora_target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"],
                                        "Modules that get LoRA adapters (ours: attention projections).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward (saves memory, costs time). Off by "
                                             "default: TRL turns it on, which only slows small CPU runs down.")
    precision: str = _f("fp32", "fp32 | bf16. bf16: training forward/backward, the KL reference forward and RL "
                                "rollouts run under bfloat16 autocast (TRL's bf16=True, also on CPU); master "
                                "weights, LoRA adapters and optimizer state stay float32, and the KL probe and "
                                "evaluations stay float32. Measured in docs/BENCHMARKS.md (CPU speed).")
    backend: str = _f("auto", "auto | transformers | unsloth. auto: Unsloth when CUDA, unsloth and an "
                              "Unsloth-loaded policy are all present; transformers + PEFT otherwise.")
    use_vllm: bool = _f(False, "Generate RL rollouts with TRL's colocated vLLM engine (GPU only).")
    vllm_mode: str = _f("colocate", "vLLM mode. Only 'colocate' is accepted: 'server' sends one prompt with n=G "
                                    "and would lose the per-rollout harness prompts.")
    vllm_gpu_memory_utilization: float = _f(0.3, "GPU memory fraction for colocated vLLM (TRL's default).")
    seed: int = _f(0, "Seed for LoRA init, TRL's sampler and the example stream.")
    report_to: str | list[str] = _f("none", "Passed to TRL/transformers (none, wandb, trackio, tensorboard...).")
    kl_probe_size: int = _f(4, "Examples in the fixed KL probe set (val split); 0 disables the per-step probe.")

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations (G) must be >= 2 for group advantages, got {self.num_generations}")
        if self.population_size < 1:
            raise ValueError(f"population_size (K) must be >= 1, got {self.population_size}")
        if self.num_generations % self.population_size:
            raise ValueError(f"population_size K={self.population_size} must divide num_generations "
                             f"G={self.num_generations} (each harness gets G/K rollouts of every problem)")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        if self.use_vllm and self.vllm_mode == "server":
            raise ValueError("vllm_mode='server' is not supported: a vLLM server generates G completions from ONE "
                             "prompt per problem (n=G), which loses the per-rollout harness prompts FST needs. "
                             "Use vllm_mode='colocate'.")
        if self.backend not in ("auto", "transformers", "unsloth"):
            raise ValueError(f"backend must be auto, transformers or unsloth, got {self.backend!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL sampling, got {self.temperature}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0
        if self.loss_type != "cispo" and self.epsilon_high > 1.0:
            warnings.warn(f"epsilon_high={self.epsilon_high} is CISPO's ratio cap; for loss_type="
                          f"{self.loss_type!r} it is a clip epsilon (DAPO: 0.28)", stacklevel=2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



CONSOLIDATE_METHODS = ("kl", "sft")
CONSOLIDATE_STUDENTS = ("none", "seed", "short")
CONSOLIDATE_TEACHERS = ("best", "population")
CONSOLIDATE_KL_SUPPORTS = ("full", "topk")


@dataclass
class ConsolidateConfig:
    """Settings of a consolidation step (distilling the evolved harness into the weights).

    What: ``method`` (kl | sft), ``student`` (none | seed | short) + ``student_system_prompt``,
    ``teacher`` (best | population).
    Batch: ``steps``, ``prompts_per_step``, ``samples_per_prompt``, ``max_new_tokens``, ``temperature``.
    Loss: ``kl_support`` (full | topk), ``top_k``, ``sft_min_reward``; RL + distillation: ``rl_coef``.
    Optimiser: ``learning_rate``, ``max_grad_norm``, ``lora_r``.
    Bookkeeping: ``seed``, ``eval_size``.
    """

    method: str = _f("kl", "kl: on-policy reverse KL to the harness-conditioned teacher (the paper authors' "
                           "experiment); sft: SFT on the teacher's high-reward completions re-rendered under the "
                           "minimal harness (DSPy BetterTogether's idea; cheaper, off-policy).")
    student: str = _f("short", "The student's minimal harness: none (the question alone, no system prompt, no "
                               "tools), seed (the run's seed harness), short (the seed's task template and tools "
                               "with a one-line system prompt and no few-shot).")
    student_system_prompt: str = _f("", "System prompt of student='short' (empty: 'Solve the task.' + the seed's "
                                        "answer format).")
    teacher: str = _f("best", "best: the best evolved harness teaches every sample; population: each population "
                              "member teaches its share (samples_per_prompt / K samples of every problem).")
    steps: int = _f(4, "Optimizer steps of one `fst-lab consolidate RUN` / `session.consolidate()` call without n "
                       "(a schedule's 'c' is one step).")
    prompts_per_step: int = _f(4, "Training problems per step.")
    samples_per_prompt: int = _f(2, "Student samples per problem per step (teacher='population': a multiple of K).")
    learning_rate: float = _f(1e-4, "AdamW learning rate of the consolidation optimizer (ours; same as the demo's "
                                    "LoRA RL rate).")
    max_grad_norm: float = _f(1.0, "Gradient clipping (0 = off).")
    max_new_tokens: int | None = _f(None, "Tokens per model turn for the student's samples (None: the run's "
                                          "max_new_tokens, else the harness's loop setting).")
    temperature: float = _f(1.0, "Sampling temperature of the student's samples (on-policy: 1.0).")
    kl_support: str = _f("full", "full: exact KL over the whole vocabulary; topk: over the student's top_k tokens "
                                 "plus one tail bucket (TRL SDFT's top-k objective; cheaper for large vocabularies).")
    top_k: int = _f(64, "Support size for kl_support='topk'.")
    sft_min_reward: float = _f(1.0, "method='sft': keep teacher completions with at least this reward.")
    rl_coef: float = _f(0.0, "lambda of RL + distillation: the distillation term's weight in every RL step's loss "
                             "(0 = plain FST, bit for bit).")
    lora_r: int = _f(16, "A model that is not already a LoRA (PEFT) model gets a fresh adapter of this rank; "
                         "0 trains all weights. The slow loop's model is trained as it is (its adapter).")
    seed: int = _f(0, "Seed of problem order and sampling (each step's draws depend on (seed, step) only, so a "
                      "resumed run redraws the same samples).")
    eval_size: int = _f(8, "Held-out (val) problems for heldout_kl(), the student-to-teacher KL diagnostic.")

    def __post_init__(self):
        for name, allowed in (("method", CONSOLIDATE_METHODS), ("student", CONSOLIDATE_STUDENTS),
                              ("teacher", CONSOLIDATE_TEACHERS), ("kl_support", CONSOLIDATE_KL_SUPPORTS)):
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"must be one of {' | '.join(allowed)}, got {v!r}", path=f"consolidate.{name}")
        for name in ("steps", "prompts_per_step", "samples_per_prompt", "top_k", "eval_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "steps" else 1):
                raise ConfigError(f"must be a positive integer, got {v!r}", path=f"consolidate.{name}")
        if self.learning_rate <= 0:
            raise ConfigError(f"must be > 0, got {self.learning_rate}", path="consolidate.learning_rate")
        if self.temperature <= 0:
            raise ConfigError(f"must be > 0 (on-policy sampling), got {self.temperature}",
                              path="consolidate.temperature")
        if self.rl_coef < 0:
            raise ConfigError(f"must be >= 0, got {self.rl_coef}", path="consolidate.rl_coef")
        if self.lora_r < 0:
            raise ConfigError(f"must be >= 0, got {self.lora_r}", path="consolidate.lora_r")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings stated once, at the top level of FSTConfig, and the field each one fills in a loop config.
FAST_SHARED = {"population_size": "population_size", "seed": "seed", "max_new_tokens": "max_new_tokens"}
SLOW_SHARED = {"population_size": "population_size", "num_generations": "num_generations", "seed": "seed",
               "prompts_per_step": "prompts_per_step", "report_to": "report_to",
               "max_completion_length": "max_new_tokens"}
_SHARED_NOTE = ("K, G, seed, max_new_tokens, prompts_per_step and report_to are stated once, at the top level, "
                "and flow into both loops")

_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "list": "a list", "list[str]": "a list of strings", "dict": "a mapping", "None": "null"}
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _checked(path: str, value: Any, annotation: str) -> Any:
    """``value`` if it fits the field's annotation (a string such as ``"int | None"``), else ConfigError.

    Numbers written as YAML 1.1 can't read them (``1e-4`` is a string to PyYAML) become floats."""
    alts = [a.strip() for a in str(annotation).split("|")]
    for a in alts:
        if a == "None" and value is None:
            return value
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if a == "str" and isinstance(value, str):
            return value
        if a == "bool" and isinstance(value, bool):
            return value
        if a in ("list", "list[str]") and isinstance(value, list):
            if a == "list" or all(isinstance(x, str) for x in value):
                return value
        if a == "dict" and isinstance(value, dict):
            return value
    if "float" in alts and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if not any(a in _EXPECTED for a in alts):  # a type this checker does not know: leave it to the class
        return value
    expected = " or ".join(_EXPECTED.get(a, a) for a in alts)
    raise ConfigError(f"expected {expected}, got {_short(value)}", path=path)


# Names people write for fields that difflib would not match (the paper's letters, common abbreviations).
_ALIASES = {"K": "population_size", "G": "num_generations", "T": "steps_per_cycle", "lr": "learning_rate",
            "kl_coef": "beta", "max_tokens": "max_new_tokens", "steps": "steps_per_cycle"}


def _yamlish(v: Any) -> str:
    return "null" if v is None else "true" if v is True else "false" if v is False else _short(v)


def _key_name(k: Any) -> str:
    return k if isinstance(k, str) and k.isidentifier() else repr(k)


def _refuse_unknown(prefix: str, keys, known: list[str], elsewhere: dict[str, str] | None = None) -> None:
    """ConfigError for the first key not in ``known``, with the closest known name as a hint."""
    for k in keys:
        if k in known:
            continue
        path = f"{prefix}{_key_name(k)}"
        home = (elsewhere or {}).get(k) if isinstance(k, str) else None
        if home:
            raise ConfigError(f"unknown key here; it belongs {home}", path=path)
        alias = _ALIASES.get(str(k))
        close = [alias] if alias in known else difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f" (known keys: {', '.join(known)})"
        raise ConfigError(f"unknown key{hint}", path=path)


def _homes(exclude: str = "") -> dict[str, str]:
    """Where a loop setting belongs, for keys written in the wrong section: ``{"beta": "under slow:"}``."""
    found: dict[str, list[str]] = {}
    for section, cls in (("fast", FastConfig), ("slow", SlowConfig)):
        if section != exclude:
            for f in fields(cls):
                found.setdefault(f.name, []).append(section)
    return {n: "under " + " or ".join(f"{s}:" for s in secs) for n, secs in found.items()}


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@dataclass
class Stage:
    """One stage of a (continual) run: a task, its difficulty, and how many RL steps it lasts."""

    task: str = _f("math", "Task family: math | codeio | physics | hover | jsonl.")
    level: int = _f(1, "Difficulty level of the built-in generator.")
    steps: int | None = _f(None, "RL steps in this stage (None: the whole run).")
    harness: str | None = _f(None, "Seed harness for this stage (name in harnesses/ or a path). None: the run's.")
    task_kwargs: dict = _f({}, "Extra constructor arguments for the task (e.g. path/scorer for jsonl).")


@dataclass
class FSTConfig:
    """Everything a run needs. Defaults follow the paper (App. D, third-party reading) where it has one.

    Groups: *what* (mode, model, task/stages, harness), *schedule* (cycles, T, K, G, schedule string),
    *data* (examples per cycle, eval), *fast loop* (``fast``: a :class:`FastConfig`), *slow loop*
    (``slow``: a :class:`SlowConfig`), *bookkeeping* (seed, runs_root, checkpoints, tracking).

    ``fast`` and ``slow`` may be given as mappings (as in YAML) or as the typed configs; either way they
    hold the typed configs after construction, with K, G, seed, max_new_tokens, prompts_per_step and
    report_to filled in from the top level::

        >>> c = FSTConfig(population_size=2, num_generations=4, seed=3, fast={"budget_passes": 2})
        >>> (c.fast.population_size, c.fast.seed, c.slow.num_generations, c.fast.budget_passes)
        (2, 3, 4, 2)
    """

    # what
    mode: str = _f("fst", "fst (co-evolve harness and weights) | rl (fixed seed harness) | gepa (frozen weights).")
    model: str = _f("smollm2-135m", "Policy: short name (embedded SmolLM2-135M-Instruct), local path or cached HF id.")
    task: str = _f("math", "Task when `stages` is empty.")
    level: int = _f(1, "Difficulty level when `stages` is empty.")
    task_kwargs: dict = _f({}, "Extra task constructor arguments.")
    harness: str | None = _f(None, "Seed harness (name in harnesses/ or path). None: the task's own harness.")
    stages: list = _f([], "Continual learning: list of {task, level, steps, harness}. Empty: one stage.")
    # schedule
    cycles: int = _f(2, "Number of fast/slow cycles for `run()`.")
    steps_per_cycle: int = _f(6, "T: RL steps between GEPA rounds (paper App. D: T=6).")
    population_size: int = _f(4, "K: harnesses in the population (paper App. D: K=4). Flows into fast and slow.")
    num_generations: int = _f(8, "G: rollouts per problem, split G/K per harness (paper App. D: G=8). Flows "
                                 "into slow.")
    schedule: str | None = _f(None, "Per-cycle recipe of p (GEPA round), w (RL step) and c (consolidation step), "
                                    "e.g. 'p -> w*6'. None: the mode's default.")
    # data
    prompts_per_step: int = _f(2, "Problems per RL step (ours: CPU scale; paper uses far larger batches). Flows "
                                  "into slow.")
    fast_train_size: int = _f(8, "Examples GEPA reflects on per round (ours: CPU scale).")
    fast_val_size: int = _f(8, "Examples GEPA selects the Pareto front on per round (ours: CPU scale).")
    eval_size: int = _f(16, "Validation examples for `evaluate()`.")
    eval_k: int = _f(1, "Samples per validation example for mean@k.")
    eval_every_cycle: bool = _f(True, "Evaluate on validation at the end of each cycle.")
    max_new_tokens: int | None = _f(None, "Override the harness's max_new_tokens for all rollouts (None: harness). "
                                          "Flows into fast.max_new_tokens and slow.max_completion_length.")
    # loops
    fast: FastConfig = field(default_factory=dict, metadata={"help": (
        "The fast loop (FastConfig): budget_passes, reflection_lm, ... Written as a mapping in YAML.")})
    slow: SlowConfig = field(default_factory=dict, metadata={"help": (
        "The slow loop (SlowConfig): loss_type, beta, learning_rate, ... Written as a mapping in YAML.")})
    # bookkeeping
    seed: int = _f(0, "Seed for data, sampling and training. Flows into fast and slow.")
    runs_root: str = _f("runs", "Where run directories are created.")
    run_name: str | None = _f(None, "Run directory name (None: <mode>-<task>-<timestamp>).")
    checkpoint_every: int = _f(1, "Save adapter + optimizer state every N RL steps (resume loses nothing after it).")
    save_rollouts: int = _f(8, "Trajectories per step written to rollouts/ for the browsers.")
    report_to: str = _f("none", "Passed to TRL: none | trackio | wandb | mlflow (JSONL is always written). Flows "
                                "into slow.")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field and (re)build the typed ``fast``/``slow`` configs; ConfigError on the first
        problem, naming its field."""
        for f in fields(self):
            if f.name not in ("fast", "slow"):
                setattr(self, f.name, _checked(f.name, getattr(self, f.name), f.type))
        if self.mode not in MODES:
            raise ConfigError(f"'{self.mode}' is not one of {list(MODES)}", path="mode")
        for name in ("cycles", "steps_per_cycle", "population_size", "num_generations", "prompts_per_step",
                     "fast_train_size", "fast_val_size", "eval_size", "eval_k", "checkpoint_every",
                     "save_rollouts"):
            v = getattr(self, name)
            if v < (0 if name in ("cycles", "save_rollouts") else 1):
                raise ConfigError(f"must be a positive integer, got {v!r}", path=name)
        if self.num_generations % self.population_size:
            raise ConfigError(f"K={self.population_size} must divide num_generations G={self.num_generations}: "
                              "each problem's G rollouts are split G/K per harness", path="population_size")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"must be a positive integer or null, got {self.max_new_tokens!r}",
                              path="max_new_tokens")
        from fst_lab.tasks import base as task_base

        known = task_base.task_names()
        for i, st in enumerate(self.stage_list()):
            where = f"stages[{i}]" if self.stages else "task"
            if st.task not in known:
                raise ConfigError(f"unknown task '{st.task}' (available: {known})",
                                  path=f"{where}.task" if self.stages else "task")
            levels = getattr(task_base._REGISTRY.get(st.task), "levels", None)  # generated tasks have levels
            if levels and st.level not in levels:
                raise ConfigError(f"task '{st.task}' has levels {list(levels)}, not {st.level!r}",
                                  path=f"{where}.level" if self.stages else "level")
            if self.stages and (st.steps is None or st.steps < 1) and i < len(self.stages) - 1:
                raise ConfigError("every stage but the last needs a positive step count", path=f"{where}.steps")
        self.fast = self._loop("fast", FastConfig, self.fast, FAST_SHARED)
        self.slow = self._loop("slow", SlowConfig, self.slow, SLOW_SHARED)
        self.cycle_plan()  # parses the schedule

    def _loop(self, key: str, cls: type, value: Any, shared: dict[str, str]):
        """The typed loop config for ``fast``/``slow``: its own settings plus the shared top-level ones."""
        names = [f.name for f in fields(cls)]
        types = {f.name: f.type for f in fields(cls)}
        synced = self.__dict__.setdefault("_synced", {}).get(key, {})
        if isinstance(value, cls):
            # A typed config from Python: its shared fields count as stated only when they were set
            # explicitly, i.e. differ from the class default and from what this config filled in before.
            over = {}
            for f in fields(cls):
                v = getattr(value, f.name)
                if f.name in shared and (v == _default(f) or (f.name in synced and v == synced[f.name])):
                    continue
                over[f.name] = copy.deepcopy(v)
        elif isinstance(value, dict):
            other = _homes(exclude=key)
            other.update({f.name: "at the top level" for f in fields(FSTConfig) if f.name not in names})
            _refuse_unknown(f"{key}.", value, names, other)
            over = dict(value)
        else:
            raise ConfigError(f"expected a mapping of {cls.__name__} settings, got {_short(value)}", path=key)
        for name in list(over):
            over[name] = _checked(f"{key}.{name}", over[name], types[name])
        tops = {name: getattr(self, top) for name, top in shared.items()}
        for name, top in shared.items():
            if name in over and over[name] != tops[name]:
                raise ConfigError(f"{_yamlish(over[name])} conflicts with {top}: {_yamlish(tops[name])} at the "
                                  f"top level; {_SHARED_NOTE}", path=f"{key}.{name}")
        try:
            obj = cls(**{**over, **tops})
        except (ValueError, TypeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            m = re.match(r"(\w+)", msg)
            field_name = m.group(1) if m and m.group(1) in names else None
            if field_name in shared:  # stated at the top level: point there
                path = shared[field_name]
            else:
                path = f"{key}.{field_name}" if field_name else key
            if field_name:  # "loss_type must be ..." -> "slow.loss_type: must be ..."
                msg = re.sub(rf"^{field_name}\s*(?:\((\w+)\)\s*)?(?=must\b)", lambda m: f"{m.group(1) or ''} ",
                             msg).strip()
            raise ConfigError(msg, path=path) from None
        self._synced[key] = tops
        return obj

    def stage_list(self) -> list[Stage]:
        if not self.stages:
            return [Stage(task=self.task, level=self.level, steps=None, harness=self.harness,
                          task_kwargs=dict(self.task_kwargs))]
        out = []
        names = [f.name for f in fields(Stage)]
        types = {f.name: f.type for f in fields(Stage)}
        for i, s in enumerate(self.stages):
            if isinstance(s, Stage):
                s = dataclasses.asdict(s)
            if not isinstance(s, dict):
                raise ConfigError(f"must be a mapping like {{task: hover, steps: 200}}, got {_short(s)}",
                                  path=f"stages[{i}]")
            _refuse_unknown(f"stages[{i}].", s, names)
            out.append(Stage(**{k: _checked(f"stages[{i}].{k}", v, types[k]) for k, v in s.items()}))
        return out

    def cycle_plan(self) -> list[str]:
        """The schedule of one cycle as a list of 'p' (fast), 'w' (slow) and 'c' (consolidation) steps."""
        sched = self.schedule
        if sched is None:
            sched = {"fst": f"p -> w*{self.steps_per_cycle}", "rl": f"w*{self.steps_per_cycle}", "gepa": "p"}[self.mode]
        plan: list[str] = []
        for tok in [t.strip() for t in sched.split("->")]:
            m = re.fullmatch(r"([pwc])(?:\s*\*\s*(\d+))?", tok)
            if not m:
                raise ConfigError(f"cannot parse '{tok}' in '{sched}' (use p, w, c, w*6 joined by '->')",
                                  path="schedule")
            plan += [m.group(1)] * int(m.group(2) or 1)
        if not plan:
            raise ConfigError(f"'{sched}' has no steps (w*0 repeats nothing)", path="schedule")
        if self.mode == "rl" and "p" in plan:
            raise ConfigError("mode 'rl' keeps the seed harness fixed; remove 'p' steps", path="schedule")
        if self.mode == "gepa" and ("w" in plan or "c" in plan):
            raise ConfigError("mode 'gepa' freezes the weights; remove 'w' and 'c' steps", path="schedule")
        return plan

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        """The YAML shape: plain values, ``fast``/``slow`` as mappings without the shared settings."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("fast", "slow"):
                shared = FAST_SHARED if f.name == "fast" else SLOW_SHARED
                v = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else dict(v)
                v = {k: x for k, x in v.items() if k not in shared}
            elif f.name == "stages":
                v = [dataclasses.asdict(s) if isinstance(s, Stage) else copy.deepcopy(s) for s in v]
            d[f.name] = copy.deepcopy(v)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None, lines: dict[str, int] | None = None) -> "FSTConfig":
        """Build from a mapping (a parsed YAML file). ``source``/``lines`` place errors in that file."""
        try:
            if not isinstance(d, dict):
                raise ConfigError(f"config must be a mapping, got {type(d).__name__}")
            _refuse_unknown("", d, [f.name for f in fields(cls)], _homes())
            return cls(**copy.deepcopy(d))
        except ConfigError as e:
            raise e.located(source, lines) from None

    @classmethod
    def load(cls, path: str | Path) -> "FSTConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", source=str(p)) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, not a config file", source=str(p)) from None
        except PermissionError:
            raise ConfigError("permission denied", source=str(p)) from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(p)) from None
        try:
            d = yaml.safe_load(text) or {}
            lines = _yaml_lines(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            raise ConfigError(f"invalid YAML: {e.problem or e.context}", source=str(p),
                              line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              source=str(p)) from None
        return cls.from_dict(d, source=str(p), lines=lines)

    def replace(self, **kw) -> "FSTConfig":
        d = self.to_dict()
        d.update(kw)
        return FSTConfig.from_dict(d)


def field_lines(path: str | Path | None) -> dict[str, int]:
    """Line of every field in a config file (``{}`` if it can't be read): lets later errors about a
    field (a missing model, a harness) point at the line that set it, via :meth:`ConfigError.located`."""
    try:
        return _yaml_lines(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def _yaml_lines(text: str) -> dict[str, int]:
    """1-based line of every field path in a YAML document (``fast.budget_passes``, ``stages[1].task``)."""
    out: dict[str, int] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = f"{path}.{k.value}" if path else str(k.value)
                out.setdefault(name, k.start_mark.line + 1)
                walk(v, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                name = f"{path}[{i}]"
                out.setdefault(name, v.start_mark.line + 1)
                walk(v, name)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return out


def help_table() -> str:
    """Markdown table of every field with its default and help (for docs/CONFIG.md)."""
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in fields(FSTConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | `{default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows)
