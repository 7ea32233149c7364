"""The typed settings of the loops a run drives: :class:`FastConfig` (one GEPA round), :class:`SlowConfig`
(the RL steps), :class:`ConsolidateConfig` (distilling the harness into the weights).

Written like TRL's ``GRPOConfig``: every field has a ``help`` text (citing the paper where a default comes
from it) and ``__post_init__`` checks cross-field constraints. :class:`fst_lab.config.FSTConfig` holds one
of each (``fast:``, ``slow:``, ``consolidate:`` in YAML) and fills in the settings stated once at its top
level (K, G, seed, ...); import them from ``fst_lab.config`` (or fast/slow/consolidate).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field

from fst_lab.errors import ConfigError

def _f(default, help: str, **kw):
    """A dataclass field with help text (``metadata["help"]``, as in TRL's configs)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# The range a numeric setting must lie in, by name; ``None`` passes (it means "the default" where allowed).
_RANGES = {">= 0": lambda v: v >= 0, "> 0": lambda v: v > 0, ">= 1": lambda v: v >= 1,
           "in [0, 1)": lambda v: 0 <= v < 1, "in (0, 1]": lambda v: 0 < v <= 1}


def _check_ranges(obj, rules: dict[str, str]) -> None:
    """ValueError ``"<field> must be <range>, got <value>"`` for the first field of ``rules`` out of its range
    (NaN included); non-numbers are left to the type checks."""
    for name, rule in rules.items():
        v = getattr(obj, name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not _RANGES[rule](v):
            raise ValueError(f"{name} must be {rule}, got {v!r}")


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
        _check_ranges(self, {"max_reflection_cost": "> 0", "reflection_temperature": ">= 0",
                             "reflection_max_tokens": ">= 1", "reflection_timeout": "> 0", "temperature": ">= 0",
                             "max_new_tokens": ">= 1"})

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
    micro_batch_size: int | None = _f(None, "Completions per forward/backward pass on each process (gradient "
                                            "accumulation over the rest; the CISPO/DAPO update is the same). The "
                                            "step's activation memory is linear in it: ~0.8 GB per 550-token "
                                            "completion for the 135M policy in bf16 on CPU (benchmarks/"
                                            "bench_memory.py). None: all of them at once. Must divide the "
                                            "per-process completions.")
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
    precision: str = _f("auto", "auto | fp32 | bf16. auto: bf16 for LoRA on a CPU with bf16 instructions "
                                "(avx512_bf16 / AMX) and a model of hidden size >= 512 (the embedded model), fp32 "
                                "otherwise (tiny test models: bf16 kernels cost more than they save). "
                                "bf16: the trained model runs under bfloat16 autocast (TRL's "
                                "bf16=True, which works on CPU): training forward/backward, the KL reference "
                                "forward, RL rollouts, and also evaluations and GEPA rollouts of "
                                "the live policy (the trainer wraps the model's forward), so sampling and training "
                                "see the same numerics. With LoRA on CPU the frozen linear weights (projections, "
                                "LM head) are stored in bf16 once, so no forward re-casts them; LoRA adapters, "
                                "their optimizer state, the embedding and norms stay float32, and the KL probe "
                                "computes in float32. Measured in docs/BENCHMARKS.md (CPU speed).")
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
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0
        _check_ranges(self, {"learning_rate": "> 0", "epsilon_high": "> 0", "epsilon": ">= 0", "beta": ">= 0",
                             "adam_beta1": "in [0, 1)", "adam_beta2": "in [0, 1)", "adam_epsilon": "> 0",
                             "weight_decay": ">= 0", "warmup_steps": ">= 0", "max_grad_norm": ">= 0",
                             "max_completion_length": ">= 1", "rollout_batch_size": ">= 1", "lora_r": ">= 1",
                             "lora_alpha": "> 0", "lora_dropout": "in [0, 1)",
                             "vllm_gpu_memory_utilization": "in (0, 1]", "kl_probe_size": ">= 0"})
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
        try:
            _check_ranges(self, {"max_grad_norm": ">= 0", "max_new_tokens": ">= 1"})
        except ValueError as e:
            name, _, rest = str(e).partition(" ")
            raise ConfigError(rest, path=f"consolidate.{name}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
