"""The slow loop of FST: RL on the policy weights over harness-conditioned rollouts (one persistent TRL trainer).

    >>> learner = SlowLearner(policy, task, population, SlowConfig(num_generations=8, population_size=4))
    >>> records = learner.step(6)            # 6 optimizer steps, then control comes back: one dict each
    >>> learner.set_population(new_pop)      # GEPA's new harnesses: used from the very next step
    >>> learner.kl_probe(), learner.policy   # KL to the start weights; the live policy for the fast loop

For each problem, its G rollouts are split G/K across the K harnesses of the current population
(rollout i of a group uses harness i // (G/K)) and the advantage is normalised once per problem
across all G (TRL's group normalisation). The loss is TRL's CISPO by default (the paper's choice).

Two parts, two modules. :mod:`fst_lab.stepper` runs TRL's ``train()`` in a worker thread one optimizer
step at a time and knows nothing of FST. This module is the FST part, and all of it runs on the
caller's thread except the rollouts themselves:

* **Before a step** (caller): :meth:`SlowLearner.step` plans the step, the example of each group
  (seeded shuffled passes over the current task) and the harness of each rollout, from the population
  and task as they are now, so ``set_population`` / ``set_task`` take effect at the very next step.
* **During the step** (worker): TRL calls the public ``rollout_func`` hook, :meth:`SlowLearner._rollout`,
  which runs the plan through :func:`fst_lab.rollout.rollout_pairs` (batched, multi-turn, tools
  executed) and hands TRL token ids, ``env_mask`` (TRL's ``tool_mask``; 0 on tool observations and on
  zero-variance groups, which the paper drops) and the task's rewards. The dataset rows are only
  placeholders that pace TRL's sampler (G consecutive copies = one group).
* **After the step** (caller): the record is built from values: the dict TRL logged for the step
  (loss, its KL, entropy, clip ratios...) and the rollouts' own rewards, slots and token counts; then
  the KL probe runs (:mod:`fst_lab.klprobe`).
* **Ctrl-C** abandons a step still generating (nothing changed; the next ``step()`` redoes it) or lets
  one past generation finish; ``step()`` raises :class:`~fst_lab.stepper.StepInterrupted` carrying the
  records of the steps that completed. The learner stays usable: save, step again, close.
* **Extra loss** (``extra_loss``): ``fn(model, inputs) -> Tensor | None`` added to TRL's loss in
  ``compute_loss`` (e.g. a distillation term); unset or None leaves TRL's loss untouched.
* **Resume**: :meth:`save_state` writes an HF-Trainer checkpoint (adapter/model safetensors,
  optimizer, scheduler, RNG, trainer state) plus ``fst_state.json``; :meth:`load_state` resumes
  through ``trainer.train(resume_from_checkpoint=...)`` (HF loads every tensor with ``weights_only=True``).

Private TRL/transformers methods used: none (``compute_loss`` is overridden, calling TRL's). Public-but-
experimental: ``rollout_func`` and its ``env_mask`` extra field. Attributes read: ``trainer.model``,
``.optimizer``, ``.lr_scheduler``, ``.state``, ``.accelerator``, ``.control``, ``.callback_handler``,
``.ref_model`` (and, for vLLM, ``.vllm_generation``/``.eos_token_ids``); helper
``trl.trainer.utils.use_adapter``. Full fine-tuning with beta > 0 points ``model.config._name_or_path``
at a snapshot of the start weights, because TRL builds its reference model from that path.

Under ``accelerate launch`` (DDP) nothing changes: every process runs its own rollouts for its slice
of the groups (a group never straddles processes), TRL gathers rewards, DDP averages gradients. See
``docs/DISTRIBUTED.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fst_lab import backends
from fst_lab.loop_configs import LOSS_TYPES, VLLM_MODES, SlowConfig  # noqa: F401  (re-exported)
from fst_lab.episodes import Episode, episode_tokens  # noqa: F401  (re-exported)
from fst_lab.harness import Harness, atomic_write_text
from fst_lab.klprobe import probe_kl
from fst_lab.models import Policy, cuda_available, generation_check
from fst_lab.rollout import rollout_pairs
from fst_lab.stepper import StepInterrupted, TrainerStepper
from fst_lab.tasks.base import answer_key

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger(__name__)

STATE_FILE = "fst_state.json"
STATE_FORMAT = 1
_N_SLOTS = 1024  # placeholder dataset rows; they only pace TRL's sampler (examples come from our own stream)

ExtraLoss = Callable[[Any, dict], Any]  # fn(model, inputs) -> torch.Tensor | None


@functools.lru_cache(maxsize=None)
def _trainer_class():
    """TRL's GRPOTrainer with one extension point, ``extra_loss`` (class made lazily: TRL imports slowly)."""
    from trl import GRPOTrainer

    class FSTGRPOTrainer(GRPOTrainer):
        """``compute_loss`` = TRL's loss + ``extra_loss(model, inputs)`` when that is set and returns a tensor.

        The term is added per micro-batch before the Trainer's gradient-accumulation scaling, exactly as TRL's
        own loss is; its values are kept in ``extra_loss_values`` for the step record."""

        extra_loss: ExtraLoss | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
            fn = self.extra_loss
            if fn is None:
                return loss
            extra = fn(model, inputs)
            if extra is None:
                return loss
            self.extra_loss_values.append(float(extra.detach()))
            return loss + extra

    FSTGRPOTrainer.extra_loss_values = []  # replaced per instance in SlowLearner
    return FSTGRPOTrainer


# ---------------------------------------------------------------------------- the learner
class SlowLearner:
    """RL on the policy weights over harness-conditioned rollouts, one optimizer step at a time.

    ``policy.model`` is trained in place (LoRA is injected into it); use :attr:`policy` for the live
    weights and :meth:`base_policy` for the start weights. Call :meth:`close` (or use ``with``) to end
    the trainer thread when the learner is no longer needed.

        >>> from fst_lab.models import tiny_policy
        >>> cfg = SlowConfig(num_generations=4, population_size=2, prompts_per_step=2, max_completion_length=8)
        >>> with SlowLearner(tiny_policy(), task, [h1, h2], cfg) as learner:
        ...     learner.step(2)[-1]["reward"]
    """

    def __init__(self, policy: Policy, task: "Task", population: Sequence[Harness],
                 config: SlowConfig | None = None, output_dir: str | os.PathLike | None = None, *,
                 extra_loss: ExtraLoss | None = None):
        self.config = config = config or SlowConfig()
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="fst-slow-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = policy.tokenizer
        self._source_policy = policy
        self.backend = backends.resolve_backend(config, policy)
        if config.precision == "auto":  # decided once, here: the learner's config says what it runs
            precision = backends.resolve_precision(config, self.backend, backends.hidden_size(policy.model))
            self.config = config = dataclasses.replace(config, precision=precision)

        # World size as torchrun / accelerate / mpirun export it (TrainingArguments builds the process group
        # below; it is checked against this).
        self.num_processes = _env_world_size()
        G, P = config.num_generations, self.num_processes
        if config.prompts_per_step % P:
            raise ValueError(f"prompts_per_step={config.prompts_per_step} must be divisible by the number of "
                             f"processes ({P}) so that every problem's G rollouts stay on one process")
        per_device = config.prompts_per_step * G // P
        micro = config.micro_batch_size or per_device
        if per_device % micro:
            raise ValueError(f"micro_batch_size={micro} must divide the completions per process ({per_device} = "
                             f"prompts_per_step {config.prompts_per_step} x G {G} / {P} processes)")

        self._population: tuple[Harness, ...] = ()
        self.set_population(population)
        self._use_task(task, None, start_step=0)
        self._probe_harness = self._population[0]
        self._probe_examples: list | None = None
        self._probe_cache: dict = {}  # (harness id, example id, length) -> base log-probs on the response

        model, peft_config = backends.prepare_model(policy, config, self.backend)
        self._base_copy = None
        if not config.lora and (config.beta or config.kl_probe_size):
            # Full fine-tuning: the start weights need their own frozen copy (TRL builds its KL reference
            # from a path, so hand it this snapshot's folder).
            self._base_copy = backends.fresh_copy(model)
            if config.beta:
                snap = self.output_dir / "base_model"
                self._base_copy.save_pretrained(snap, safe_serialization=True)
                model.config._name_or_path = str(snap)
        self.trainer = self._make_trainer(model, peft_config, micro, per_device // micro)
        if self.backend == "transformers" and not cuda_available():
            backends.cpu_trainer_setup(self.trainer.model, config)
        self.trainer.extra_loss = extra_loss
        self.trainer.extra_loss_values = []
        backends.install_copy_guard(self.trainer.model.get_base_model() if config.lora else self.trainer.model)
        if self.trainer.ref_model is not None:  # TRL loaded the start weights itself: one copy is enough
            self._base_copy = None
        self._gen_policy = backends.generation_policy(self.trainer, policy, config, self.backend)
        self._stepper = TrainerStepper(self.trainer)

        self._samples_seen = 0
        self._plan: tuple[Any, list[tuple[Harness, Any, int]]] | None = None  # (task, [(harness, example, slot)])
        self._rollout_stats: dict[str, list] = {}  # the latest step's rollouts, as values
        self.history: list[dict] = []
        self.last_trajectories: list = []  # this process's rollouts of the latest step (for the fast loop / UI)
        self.last_episodes: list[Episode] = []

    def _make_trainer(self, model, peft_config, micro: int, grad_accum: int):
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        config = self.config
        mcl = config.max_completion_length or max(h.loop.max_new_tokens for h in self._population)
        args = grpo_args(config, self.output_dir, micro, grad_accum, mcl, self.backend)
        if args.world_size != self.num_processes:  # pragma: no cover - defensive
            raise RuntimeError(f"world size from the environment ({self.num_processes}) != the trainer's "
                               f"({args.world_size})")
        dataset = Dataset.from_dict({"prompt": [f"fst-slot-{i}" for i in range(_N_SLOTS)]})
        # TRL 1.16 reads the model's deprecated ``is_gradient_checkpointing`` at every step (not ours to fix)
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*rollout_func.*experimental.*")
            trainer = _trainer_class()(model=model, reward_funcs=[_task_reward], args=args, train_dataset=dataset,
                                       processing_class=self.tokenizer, peft_config=peft_config,
                                       rollout_func=self._rollout)
        for cb in (PrinterCallback, ProgressCallback):  # step() returns the metrics; don't print them
            trainer.remove_callback(cb)
        return trainer

    # ------------------------------------------------------------------ public state
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (restored by :meth:`load_state`)."""
        return int(self.trainer.state.global_step)

    @property
    def samples_seen(self) -> int:
        """Completions generated for RL over this learner's life (all processes; saved with the state)."""
        return self._samples_seen

    @property
    def population(self) -> tuple[Harness, ...]:
        return self._population

    @property
    def task(self) -> "Task":
        return self._task

    @property
    def extra_loss(self) -> ExtraLoss | None:
        """``fn(model, inputs) -> Tensor | None`` added to TRL's loss at every micro-batch (None: TRL's loss)."""
        return self.trainer.extra_loss

    @extra_loss.setter
    def extra_loss(self, fn: ExtraLoss | None) -> None:
        self.trainer.extra_loss = fn

    @property
    def policy(self) -> Policy:
        """The live trained model as a :class:`Policy` (shares weights; evaluate between steps)."""
        p = self._source_policy
        return Policy(model=self.trainer.model, tokenizer=self.tokenizer, name=p.name, path=p.path,
                      backend=self.backend)

    def base_policy(self) -> Policy:
        """The start weights: the adapter-disabled model (LoRA, no copy) or the frozen copy (full FT)."""
        p = self._source_policy
        if self.config.lora:
            model: Any = backends.AdapterDisabled(self.trainer.model)
        else:
            model = self._base_model()
            if model is None:
                raise RuntimeError("full fine-tuning with beta=0 and kl_probe_size=0 keeps no copy of the start "
                                   "weights; set kl_probe_size > 0 to keep one")
        return Policy(model=model, tokenizer=self.tokenizer, name=f"{p.name}@base", path=p.path,
                      backend=self.backend)

    def copy_policy(self) -> Policy:
        """An independent copy of the current weights (LoRA merged in), e.g. to branch a run."""
        from peft import PeftModel

        model = copy.deepcopy(self.trainer.model)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
        p = self._source_policy
        return Policy(model=model, tokenizer=self.tokenizer, name=p.name, path=p.path, backend=self.backend)

    # ------------------------------------------------------------------ what the next step trains on
    def set_population(self, harnesses: Sequence[Harness], *, from_main_process: bool = False) -> None:
        """Harnesses for the next step on. Its size may differ from ``population_size`` (e.g. the seed
        alone before the first GEPA round) but must divide G; harness i gets rollouts
        [i*G/P, (i+1)*G/P) of every group.

        Under DDP every process should train on the same population: with ``from_main_process=True`` the
        main process's harnesses are broadcast to all (a collective call: every process must make it).
        """
        if from_main_process and self.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [[h.to_dict() for h in harnesses]]
            broadcast_object_list(box, from_process=0)
            harnesses = [Harness.from_dict(d) for d in box[0]]
        pop = tuple(harnesses)
        if not pop:
            raise ValueError("the population needs at least one harness")
        for h in pop:
            if not isinstance(h, Harness):
                raise TypeError(f"population members must be Harness objects, got {type(h).__name__}")
        G = self.config.num_generations
        if G % len(pop):
            raise ValueError(f"a population of {len(pop)} harnesses does not divide num_generations G={G}")
        self._population = pop

    def set_task(self, task: "Task", examples: Sequence["Example"] | None = None) -> None:
        """Train on ``task`` (its train split, or ``examples``) from the next step on (continual learning).
        Examples are drawn in seeded shuffled passes, restarting at the switch."""
        self._use_task(task, examples, start_step=self.global_step)

    def _use_task(self, task: "Task", examples: Sequence["Example"] | None, start_step: int) -> None:
        exs = list(examples) if examples is not None else list(task.examples("train"))
        if not exs:
            raise ValueError(f"task {getattr(task, 'name', task)!r} has no training examples")
        self._task, self._examples, self._orders, self._task_start_step = task, exs, {}, start_step

    # ------------------------------------------------------------------ stepping
    def step(self, n: int = 1) -> list[dict]:
        """Run ``n`` optimizer steps and return one record (a dict of values) per step.

        Keys: ``global_step``; ``reward``/``reward_std`` (all rollouts), ``reward/h{i}``/``reward_std/h{i}``
        (population slot i), ``reward_by_harness`` (by harness id); ``rollouts`` (this step's rollouts, all
        processes) and ``tokens`` (their model tokens); ``loss``, ``kl_train`` (TRL's KL on the step's
        tokens, beta > 0), ``entropy``, ``learning_rate`` and TRL's other step values; ``kl``/``kl_bare``
        (the fixed KL probe with/without a harness, when ``kl_probe_size``); ``completion_length``,
        ``fst/*`` rollout means (:func:`rollout_values`; ``fst/answer_unparsed`` = share with no parsable
        answer); ``extra_loss`` (when the hook added a term); ``step_seconds``;
        ``population``.

        Ctrl-C raises :class:`~fst_lab.stepper.StepInterrupted`; its ``records`` are the steps completed
        by this call (a step interrupted while generating is redone by the next call).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._stepper.start()  # step(0) sets train() up (optimizer, scheduler) without stepping
        out: list[dict] = []
        for _ in range(n):
            self._plan = (self._task, self._plan_step())
            t0 = time.perf_counter()
            try:
                logs = self._stepper.step()
            except StepInterrupted as e:
                if e.completed:
                    out.append(self._on_step_logged(e.logs or {}, time.perf_counter() - t0))
                e.records = out
                raise
            rec = self._on_step_logged(logs, time.perf_counter() - t0)
            out.append(rec)
            try:
                self._probe_into(rec)
            except KeyboardInterrupt:
                e = StepInterrupted(True, logs)
                e.records = out
                raise e from None
        return out

    def close(self) -> None:
        """End the trainer thread (the learner can't step afterwards). Idempotent."""
        self._stepper.close()

    def __enter__(self) -> "SlowLearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _example_for(self, step: int, group: int) -> "Example":
        """Group ``group`` of optimizer step ``step``: seeded shuffled passes over the current examples."""
        c = max(0, step - self._task_start_step) * self.config.prompts_per_step + group
        epoch, k = divmod(c, len(self._examples))
        order = self._orders.get(epoch)
        if order is None:
            order = list(range(len(self._examples)))
            random.Random(f"fst-slow|{self.config.seed}|{self._task_start_step}|{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self._examples[order[k]]

    def _plan_step(self) -> list[tuple[Harness, "Example", int]]:
        """(harness, example, population slot) of each rollout this process runs in the next step."""
        cfg, G = self.config, self.config.num_generations
        pop = self._population
        per = G // len(pop)
        n = cfg.prompts_per_step * G // self.num_processes
        offset = self.trainer.accelerator.process_index * n  # global position of this process's first rollout
        step = self.global_step
        plan = []
        for j in range(n):
            pos = offset + j
            slot = (pos % G) // per
            plan.append((pop[slot], self._example_for(step, pos // G), slot))
        return plan

    # ------------------------------------------------------------------ inside TRL's step (worker thread)
    def _rollout(self, prompts: list, trainer) -> dict:
        """TRL's ``rollout_func``: the planned rollouts (restartable: Ctrl-C abandons and later redoes them)."""
        task, plan = self._plan
        if len(prompts) != len(plan):
            raise RuntimeError(f"TRL handed {len(prompts)} prompts to one process; the step's plan has {len(plan)}")
        return self._stepper.restartable(self._run_rollouts, task, plan)

    def _run_rollouts(self, task, plan) -> dict:
        cfg, G = self.config, self.config.num_generations
        with generation_check(self._stepper.check):
            trajs = rollout_pairs(self._gen_policy, [(h, ex) for h, ex, _ in plan], task, temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_completion_length, batch_size=cfg.rollout_batch_size)
        episodes = [episode_tokens(self.tokenizer, t) for t in trajs]
        rewards = [float(t.reward) for t in trajs]
        masks = [list(e.mask) for e in episodes]
        dropped = [0.0] * len(plan)
        if cfg.drop_zero_variance_groups:
            for g0 in range(0, len(plan), G):
                rs = rewards[g0:g0 + G]
                if max(rs) - min(rs) < 1e-12:
                    for i in range(g0, g0 + G):
                        masks[i] = [0] * len(masks[i])
                        dropped[i] = 1.0
        self.last_trajectories, self.last_episodes = trajs, episodes
        self._rollout_stats = {
            "population": [h.id for h, _, _ in plan], "slot": [s for _, _, s in plan], "reward": rewards,
            "dropped": dropped, "model_tokens": [float(e.model_tokens) for e in episodes],
            "observation_tokens": [float(e.observation_tokens) for e in episodes],
            "tool_calls": [float(len(t.tool_calls)) for t in trajs], "turns": [float(t.n_turns) for t in trajs],
            "answer_unparsed": [float(answer_key(task, t) is None) for t in trajs],
            "truncated": [float(t.truncated) for t in trajs]}
        return {"prompt_ids": [e.prompt_ids for e in episodes], "completion_ids": [e.completion_ids for e in episodes],
                "logprobs": None, "env_mask": masks, "fst_reward": rewards}

    # ------------------------------------------------------------------ the step record (caller thread)
    def _on_step_logged(self, logs: dict, seconds: float) -> dict:
        """One step's record, from the values TRL logged and the rollouts' own numbers."""
        cfg = self.config
        stats = self._rollout_stats
        if self.num_processes > 1:  # per-harness figures over every process's rollouts (a collective call)
            from accelerate.utils import gather_object

            parts = gather_object([stats])
            stats = {k: [x for p in parts for x in p[k]] for k in stats}
        rec: dict[str, Any] = {"global_step": self.global_step}
        rec.update(logs)
        if "kl" in rec:
            rec["kl_train"] = rec.pop("kl")
        rec.update(rollout_values(stats, logged=rec))
        rec["rollouts"] = cfg.prompts_per_step * cfg.num_generations
        values = self.trainer.extra_loss_values
        if values:
            rec["extra_loss"] = sum(values) / len(values)
            values.clear()
        rec["step_seconds"] = seconds
        rec["population"] = list(dict.fromkeys(stats["population"]))
        self._samples_seen += rec["rollouts"]
        self.history.append(rec)
        return rec

    def _probe_into(self, rec: dict) -> None:
        if not self.config.kl_probe_size:
            return
        try:
            rec["kl"] = self.kl_probe("probe")
            rec["kl_bare"] = self.kl_probe(None)
        except Exception as e:  # a diagnostic never stops training
            log.warning("kl probe failed: %s", e)

    # ------------------------------------------------------------------ KL probe
    def _base_model(self):
        if self.config.lora:
            return None
        return self.trainer.ref_model if self.trainer.ref_model is not None else self._base_copy

    def probe_examples(self) -> list:
        """The fixed probe set: the first ``kl_probe_size`` val examples of the task at construction."""
        if self._probe_examples is None:
            n = max(1, self.config.kl_probe_size)
            exs = list(self._task.examples("val", n)) or list(self._task.examples("train", n))
            self._probe_examples = exs[:n]
        return self._probe_examples

    def kl_probe(self, harness: Harness | str | None = "probe", examples: Sequence["Example"] | None = None) -> float:
        """Mean per-token KL(pi_theta || pi_base) (exact, float32) on fixed sequences (:mod:`fst_lab.klprobe`).

        ``harness="probe"`` renders prompts with the first harness of the initial population (fixed for the
        run, so the curve is comparable across GEPA rounds); ``None`` uses the bare question (no system
        prompt, no few-shot); or pass any Harness. The base is the adapter-disabled model (LoRA) or the
        frozen start copy (full fine-tuning). Call it between steps (caller thread).
        """
        exs = list(examples) if examples is not None else self.probe_examples()
        h = self._probe_harness if harness == "probe" else harness
        return probe_kl(self.trainer.model, self._base_model(), self.tokenizer, h, exs, self._probe_cache)

    # ------------------------------------------------------------------ weights
    def save_adapter(self, directory: str | os.PathLike) -> Path:
        """Save the trained weights as safetensors: the LoRA adapter (PEFT format) or the full model."""
        d = Path(directory)
        if self.trainer.accelerator.is_main_process:
            d.mkdir(parents=True, exist_ok=True)
            self.trainer.model.save_pretrained(d, safe_serialization=True)
        return d

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Load weights saved by :meth:`save_adapter` into the live model, in place (the optimizer keeps
        pointing at the same parameters)."""
        backends.load_weights(self.trainer.model, directory, lora=self.config.lora)

    # ------------------------------------------------------------------ resume
    def save_state(self, directory: str | os.PathLike) -> Path:
        """Everything needed to resume: weights (safetensors), optimizer, scheduler, RNG states, trainer
        state and the learner's own state (``fst_state.json``, written last). The layout is an HF Trainer
        checkpoint, so :meth:`load_state` resumes through TRL/HF's own code."""
        import numpy as np
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
        from transformers.trainer_callback import ExportableState

        self._stepper.start()  # the optimizer and scheduler exist once train() has set up
        tr, acc = self.trainer, self.trainer.accelerator
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            self.save_adapter(d)
            torch.save(tr.optimizer.state_dict(), d / OPTIMIZER_NAME)
            torch.save(tr.lr_scheduler.state_dict(), d / SCHEDULER_NAME)
            for cb in tr.callback_handler.callbacks + [tr.control]:
                if isinstance(cb, ExportableState):
                    tr.state.stateful_callbacks[cb.__class__.__name__] = cb.state()
            tr.state.save_to_json(str(d / TRAINER_STATE_NAME))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():  # pragma: no cover
            rng["cuda"] = torch.cuda.random.get_rng_state_all() if acc.num_processes > 1 else \
                torch.cuda.random.get_rng_state()
        name = "rng_state.pth" if acc.num_processes <= 1 else f"rng_state_{acc.process_index}.pth"
        torch.save(rng, d / name)
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"format": STATE_FORMAT, "global_step": self.global_step, "samples_seen": self._samples_seen,
                    "task_start_step": self._task_start_step, "task": getattr(self._task, "name", ""),
                    "n_examples": len(self._examples), "population": [h.to_dict() for h in self._population],
                    "probe_harness": self._probe_harness.to_dict(), "config": self.config.to_dict(),
                    "backend": self.backend, "num_processes": acc.num_processes}
            atomic_write_text(d / STATE_FILE, json.dumps(meta, indent=1))
        acc.wait_for_everyone()
        return d

    def load_state(self, directory: str | os.PathLike) -> None:
        """Resume from :meth:`save_state`: weights, optimizer, scheduler, global step, RNG, population.

        Call it on a fresh learner (built like the saved one), before its first :meth:`step`. The task
        and its examples are not saved: call :meth:`set_task` first if the run had switched tasks.
        """
        if self._stepper.started:
            raise RuntimeError("load_state() must be called on a fresh SlowLearner, before step() or save_state()")
        d = Path(directory)
        f = d / STATE_FILE
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: not a complete SlowLearner checkpoint")
        meta = json.loads(f.read_text())
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{f}: unknown checkpoint format {meta.get('format')!r}")
        self._samples_seen = int(meta["samples_seen"])
        self._task_start_step = int(meta["task_start_step"])
        self._orders = {}
        self.set_population([Harness.from_dict(x) for x in meta["population"]])
        self._probe_harness = Harness.from_dict(meta["probe_harness"])
        self._stepper.start(resume=str(d))


def grpo_args(config: SlowConfig, output_dir: Path, micro: int, grad_accum: int, max_completion_length: int,
              backend: str):
    """TRL's ``GRPOConfig`` for a :class:`SlowConfig` (one optimizer step per ``step()``; no TRL printing)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=grad_accum,
        num_generations=config.num_generations,
        max_completion_length=max_completion_length,
        temperature=config.temperature, top_p=1.0, top_k=0,
        loss_type=config.loss_type, epsilon=config.epsilon, epsilon_high=config.epsilon_high,
        beta=config.beta, scale_rewards=config.scale_rewards, num_iterations=1,
        learning_rate=config.learning_rate, adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=config.max_grad_norm,
        max_steps=10**9,  # unbounded: step() decides how many run
        logging_strategy="steps", logging_steps=1, save_strategy="no", report_to=config.report_to,
        disable_tqdm=True, seed=config.seed,
        disable_dropout=True, remove_unused_columns=False, log_completions=False,
        use_vllm=config.use_vllm, vllm_mode=config.vllm_mode,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=False,  # rollouts don't carry vLLM's sampling logprobs
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        **backends.device_args(backend, config.precision),
        **_checkpointing_args(GRPOConfig, config.gradient_checkpointing),
    )


def _checkpointing_args(args_class, on: bool) -> dict:
    """transformers >= 5.2x names it ``activation_checkpointing`` (``gradient_checkpointing`` warns); the GPU
    library set's transformers 5.17 only knows the old name."""
    import dataclasses

    if "activation_checkpointing" in {f.name for f in dataclasses.fields(args_class)}:
        return {"activation_checkpointing": on, "gradient_checkpointing": None}
    return {"gradient_checkpointing": on}


def _env_world_size() -> int:
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def _task_reward(prompts, completions, fst_reward, **_):
    """TRL reward function: the task score computed in the rollout (an extra field of rollout_func's output)."""
    return list(fst_reward)


ROLLOUT_MEANS = ("model_tokens", "observation_tokens", "tool_calls", "turns", "answer_unparsed", "truncated")


def rollout_values(stats: dict[str, list], logged: dict | None = None) -> dict[str, Any]:
    """A step's record values from its rollouts' own numbers (``stats``: one list entry per rollout, keys
    ``population``/``slot``/``reward``/``dropped`` and :data:`ROLLOUT_MEANS`): ``reward/h{i}`` and
    ``reward_std/h{i}`` per population slot, ``reward_by_harness``, ``fst/<key>`` means (``fst/answer_unparsed``:
    the share of rollouts with no parsable answer; ``fst/truncated``: the share whose last turn hit the token
    cap; ``fst/dropped_groups``), ``completion_length``, ``tokens``,
    and ``reward``/``reward_std`` unless ``logged`` (the values TRL logged for the step) has them."""
    out: dict[str, Any] = {}
    slots: dict[int, list[float]] = {}
    for k, r in zip(stats["slot"], stats["reward"]):
        slots.setdefault(k, []).append(r)
    by_id: dict[str, list[float]] = {}
    for k in sorted(slots):
        out[f"reward/h{k}"], out[f"reward_std/h{k}"] = _mean_std(slots[k])
        by_id.setdefault(stats["population"][stats["slot"].index(k)], []).extend(slots[k])
    out["reward_by_harness"] = {hid: _mean_std(v)[0] for hid, v in by_id.items()}
    mean, std = _mean_std(stats["reward"])
    have = logged or {}
    out["reward"], out["reward_std"] = have.get("reward", mean), have.get("reward_std", std)
    for key in ROLLOUT_MEANS:
        out[f"fst/{key}"] = _mean_std(stats[key])[0]
    out["fst/dropped_groups"] = _mean_std(stats["dropped"])[0]
    out["completion_length"] = out["fst/model_tokens"]
    out["tokens"] = int(sum(stats["model_tokens"]))
    return out


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    return m, math.sqrt(max(0.0, sum(x * x for x in xs) / len(xs) - m * m))
