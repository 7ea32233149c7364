"""One documented config for a whole FST run (YAML file <-> dataclass), baselines one flag away.

    mode: fst            # fst | rl (fixed seed harness) | gepa (frozen weights)
    task: math
    cycles: 2
    steps_per_cycle: 6   # T (paper App. D)
    population_size: 4   # K (paper App. D)
    num_generations: 8   # G (paper App. D); K must divide G
    schedule: "p -> w*6" # optional: per-cycle recipe, DSPy-BetterTogether style

Schedules: a cycle is a sequence of ``p`` (a fast/prompt step: one GEPA round) and ``w`` (a slow/weights
step: one RL optimizer step), joined by ``->``; ``w*6`` repeats. Defaults per mode: fst ``p -> w*T``,
rl ``w*T``, gepa ``p``.

Continual learning: ``stages`` is a list of ``{task, level, steps}``; the run switches task after each
stage's RL steps (paper: HoVer -> CodeIO -> Physics every 200 steps, task-agnostic seed harness).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

MODES = ("fst", "rl", "gepa")


class ConfigError(ValueError):
    """The run config is invalid. The message names the field (and the file, when loaded from one)."""


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
    ``gradient_checkpointing``.
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
    max_grad_norm: float = _f(0.0, "Gradient clipping norm; 0 disables it (paper: no clipping). HF's Trainer clips "
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
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0
        if self.loss_type != "cispo" and self.epsilon_high > 1.0:
            warnings.warn(f"epsilon_high={self.epsilon_high} is CISPO's ratio cap; for loss_type="
                          f"{self.loss_type!r} it is a clip epsilon (DAPO: 0.28)", stacklevel=2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



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
    *data* (examples per cycle, eval), *fast loop* (``fast``: FastConfig overrides), *slow loop*
    (``slow``: SlowConfig overrides), *bookkeeping* (seed, runs_root, checkpoints, tracking).
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
    population_size: int = _f(4, "K: harnesses in the population (paper App. D: K=4).")
    num_generations: int = _f(8, "G: rollouts per problem, split G/K per harness (paper App. D: G=8).")
    schedule: str | None = _f(None, "Per-cycle recipe, e.g. 'p -> w*6'. None: the mode's default.")
    # data
    prompts_per_step: int = _f(2, "Problems per RL step (ours: CPU scale; paper uses far larger batches).")
    fast_train_size: int = _f(8, "Examples GEPA reflects on per round (ours: CPU scale).")
    fast_val_size: int = _f(8, "Examples GEPA selects the Pareto front on per round (ours: CPU scale).")
    eval_size: int = _f(16, "Validation examples for `evaluate()`.")
    eval_k: int = _f(1, "Samples per validation example for mean@k.")
    eval_every_cycle: bool = _f(True, "Evaluate on validation at the end of each cycle.")
    max_new_tokens: int | None = _f(None, "Override the harness's max_new_tokens for all rollouts (None: harness).")
    # loops
    fast: dict = _f({}, "FastConfig overrides (fst_lab.fast.FastConfig): budget_passes, reflection_lm, ...")
    slow: dict = _f({}, "SlowConfig overrides (fst_lab.slow.SlowConfig): loss_type, beta, learning_rate, ...")
    # bookkeeping
    seed: int = _f(0, "Seed for data, sampling and training.")
    runs_root: str = _f("runs", "Where run directories are created.")
    run_name: str | None = _f(None, "Run directory name (None: <mode>-<task>-<timestamp>).")
    checkpoint_every: int = _f(1, "Save adapter + optimizer state every N RL steps (resume loses nothing after it).")
    save_rollouts: int = _f(8, "Trajectories per step written to rollouts/ for the browsers.")
    report_to: str = _f("none", "Passed to TRL: none | trackio | wandb | mlflow (JSONL is always written).")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: '{self.mode}' is not one of {list(MODES)}")
        for name in ("cycles", "steps_per_cycle", "population_size", "num_generations", "prompts_per_step",
                     "fast_train_size", "fast_val_size", "eval_size", "eval_k", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "cycles" else 1):
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        if self.num_generations % self.population_size:
            raise ConfigError(f"population_size (K={self.population_size}) must divide num_generations "
                              f"(G={self.num_generations}): each problem's G rollouts are split G/K per harness")
        from fst_lab.tasks.base import task_names

        known = task_names()
        for i, st in enumerate(self.stage_list()):
            where = f"stages[{i}]" if self.stages else "task"
            if st.task not in known:
                raise ConfigError(f"{where}: unknown task '{st.task}' (available: {known})")
            if st.steps is not None and (not isinstance(st.steps, int) or isinstance(st.steps, bool)):
                raise ConfigError(f"{where}.steps: expected an integer, got {st.steps!r}")
            if not isinstance(st.level, int) or isinstance(st.level, bool):
                raise ConfigError(f"{where}.level: expected an integer, got {st.level!r}")
            if self.stages and (st.steps is None or st.steps < 1) and i < len(self.stages) - 1:
                raise ConfigError(f"{where}.steps: every stage but the last needs a positive step count")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"max_new_tokens: must be a positive integer or null, got {self.max_new_tokens!r}")
        for key in ("fast", "slow"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key}: must be a mapping of overrides")
        self.cycle_plan()  # parses the schedule

    def stage_list(self) -> list[Stage]:
        if not self.stages:
            return [Stage(task=self.task, level=self.level, steps=None, harness=self.harness,
                          task_kwargs=dict(self.task_kwargs))]
        out = []
        for i, s in enumerate(self.stages):
            if isinstance(s, Stage):
                out.append(s)
                continue
            if not isinstance(s, dict):
                raise ConfigError(f"stages[{i}]: must be a mapping like {{task: hover, steps: 200}}, got {s!r}")
            unknown = set(s) - {f.name for f in fields(Stage)}
            if unknown:
                raise ConfigError(f"stages[{i}]: unknown keys {sorted(unknown)}")
            out.append(Stage(**s))
        return out

    def cycle_plan(self) -> list[str]:
        """The schedule of one cycle as a list of 'p' / 'w' steps."""
        sched = self.schedule
        if sched is None:
            sched = {"fst": f"p -> w*{self.steps_per_cycle}", "rl": f"w*{self.steps_per_cycle}", "gepa": "p"}[self.mode]
        plan: list[str] = []
        for tok in [t.strip() for t in sched.split("->")]:
            m = re.fullmatch(r"([pw])(?:\s*\*\s*(\d+))?", tok)
            if not m:
                raise ConfigError(f"schedule: cannot parse '{tok}' in '{sched}' (use p, w, w*6 joined by '->')")
            plan += [m.group(1)] * int(m.group(2) or 1)
        if self.mode == "rl" and "p" in plan:
            raise ConfigError("schedule: mode 'rl' keeps the seed harness fixed; remove 'p' steps")
        if self.mode == "gepa" and "w" in plan:
            raise ConfigError("schedule: mode 'gepa' freezes the weights; remove 'w' steps")
        return plan

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) if isinstance(s, Stage) else dict(s) for s in self.stages]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None) -> "FSTConfig":
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}config must be a mapping, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where}unknown config keys {unknown}")
        for k, v in d.items():
            f = known[k]
            if f.type in ("int", "int | None") and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"{where}{k}: expected an integer, got {v!r}")
            if f.type in ("str", "str | None") and v is not None and not isinstance(v, str):
                raise ConfigError(f"{where}{k}: expected a string, got {v!r}")
            if f.type in ("bool",) and not isinstance(v, bool):
                raise ConfigError(f"{where}{k}: expected true/false, got {v!r}")
            if f.type in ("list",) and not isinstance(v, list):
                raise ConfigError(f"{where}{k}: expected a list, got {v!r}")
            if f.type in ("dict",) and not isinstance(v, dict):
                raise ConfigError(f"{where}{k}: expected a mapping, got {v!r}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
        except TypeError as e:
            raise ConfigError(f"{where}{e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "FSTConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            d = yaml.safe_load(text) or {}
        except yaml.MarkedYAMLError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else "?"
            raise ConfigError(f"{p}:{line}: invalid YAML: {e.problem}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        return cls.from_dict(d, source=str(p))

    def replace(self, **kw) -> "FSTConfig":
        d = self.to_dict()
        d.update(kw)
        return FSTConfig.from_dict(d)


def help_table() -> str:
    """Markdown table of every field with its default and help (for docs/CONFIG.md)."""
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in fields(FSTConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | `{default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows)
