"""The slow loop of FST: RL on the policy weights over harness-conditioned rollouts (one persistent TRL trainer).

    >>> learner = SlowLearner(policy, task, population, SlowConfig(num_generations=8, population_size=4))
    >>> metrics = learner.step(6)            # 6 optimizer steps, then control comes back
    >>> learner.set_population(new_pop)      # GEPA's new harnesses: used from the very next step
    >>> learner.kl_probe(), learner.policy   # KL to the start weights; the live policy for the fast loop

For each problem, its G rollouts are split G/K across the K harnesses of the current population
(rollout i of a group uses harness i // (G/K)) and the advantage is normalised once per problem
across all G (TRL's group normalisation). The loss is TRL's CISPO by default (the paper's choice).

How it plugs into TRL 1.16 (pinned in pyproject; ``tests/test_slow.py`` guards every assumption):

* **Generation** goes through GRPOTrainer's public ``rollout_func`` hook. The dataset rows are only
  placeholders that pace TRL's sampler (G consecutive copies = one group); at generation time
  :meth:`SlowLearner._rollout` picks each group's example from its own seeded stream over the current
  task, renders every rollout with its harness, and runs :func:`fst_lab.rollout.rollout_pairs`
  (batched, multi-turn, tools executed). Because nothing is rendered by the dataloader (which
  prefetches one batch), ``set_population`` / ``set_task`` take effect at the very next step.
* **Multi-turn episodes** become one completion: everything the model generated plus the tool
  observations between turns, with ``env_mask`` (TRL's ``tool_mask``) = 0 on observation tokens so
  only model tokens carry loss. Zero-variance groups are dropped (mask 0), as in the paper.
* **Rewards** are the task's scores (``fst_lab.rollout.score_trajectory``), handed to TRL through a
  reward function that reads them from the rollout's extra fields.
* **Stepping**: ``trainer.train()`` runs once, in a worker thread, for an unbounded number of steps.
  A callback parks that thread at the start of every optimizer step until :meth:`SlowLearner.step`
  grants the next one, so the optimizer, scheduler, ``global_step``, dataloader position and RNG
  streams are TRL's own and survive between calls; nothing of TRL's loop is re-implemented. Between
  steps the thread is parked, so the caller may evaluate, save or edit freely (one caller at a time).
* **Resume**: :meth:`save_state` writes an HF-Trainer checkpoint (adapter/model safetensors,
  optimizer, scheduler, RNG, trainer state) plus ``fst_state.json``; :meth:`load_state` resumes
  through ``trainer.train(resume_from_checkpoint=...)`` (HF loads every tensor with
  ``weights_only=True``).

Private TRL/transformers methods used: none. Public-but-experimental: ``rollout_func`` and its
``env_mask`` extra field. Attributes read: ``trainer.model``, ``.optimizer``, ``.lr_scheduler``,
``.state``, ``.accelerator``, ``.control``, ``.callback_handler``, ``.ref_model`` (and, for vLLM,
``.vllm_generation``/``.eos_token_ids``); helper ``trl.trainer.utils.use_adapter``. Full fine-tuning with
beta > 0 points ``model.config._name_or_path`` at a snapshot of the start weights, because TRL builds
its reference model from that path.

Under ``accelerate launch`` (DDP) nothing changes: every process runs its own rollouts for its slice
of the groups (a group never straddles processes), TRL gathers rewards, DDP averages gradients. See
``docs/DISTRIBUTED.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import queue
import random
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fst_lab.config import LOSS_TYPES, VLLM_MODES, SlowConfig  # noqa: F401  (re-exported)
from fst_lab.harness import Harness, atomic_write_text
from fst_lab.models import Policy, render_chat

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.rollout import Trajectory
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger(__name__)

STATE_FILE = "fst_state.json"
STATE_FORMAT = 1
_N_SLOTS = 1024  # placeholder dataset rows; they only pace TRL's sampler (examples come from our own stream)


# ---------------------------------------------------------------------------- episodes -> tokens
@dataclass
class Episode:
    """One rollout as the trainer sees it: prompt ids, completion ids, and a mask (1 = model token)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    mask: list[int]
    multi_turn: bool = False
    fallback: bool = False  # the chat template was not prefix-stable: only the last turn is trained

    @property
    def model_tokens(self) -> int:
        return sum(self.mask)

    @property
    def observation_tokens(self) -> int:
        return len(self.mask) - sum(self.mask)


_warned_fallback = False


def _observation_text(tokenizer, prev, nxt) -> str | None:
    """The text between turn ``prev``'s generated tokens and turn ``nxt``'s generation: end of the
    assistant turn, tool observations, next assistant header. None if the template re-rendered the
    earlier conversation differently (not prefix-stable)."""
    if not nxt.prompt.startswith(prev.prompt):
        return None
    rest = nxt.prompt[len(prev.prompt):]
    content = prev.completion
    if rest.startswith(content):
        after = rest[len(content):]
    else:  # templates that strip the assistant content
        stripped = content.strip()
        i = rest.find(stripped)
        if not stripped or i < 0 or rest[:i].strip():
            return None
        after = rest[i + len(stripped):]
    eos = tokenizer.eos_token
    ids = prev.completion_ids
    # The sampled ids already end with EOS: don't count the template's copy of it as an observation.
    if ids and eos and ids[-1] == tokenizer.eos_token_id and after.startswith(eos):
        after = after[len(eos):]
    return after


def episode_tokens(tokenizer, traj: "Trajectory") -> Episode:
    """Token view of a trajectory for the loss.

    Single turn: prompt = the rendered harness prompt, completion = the sampled ids. Multi-turn:
    completion = turn-1 ids + observation tokens + turn-2 ids + ..., mask 0 on observations (the
    tool results and chat-template glue between turns), so the gradient flows only through tokens the
    model sampled, each conditioned on the conversation it saw. When the chat template is not
    prefix-stable the episode falls back to its last turn (with a one-time warning).
    """
    global _warned_fallback

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    turns = traj.turns
    if not turns:
        raise ValueError(f"trajectory {traj.example_id}/{traj.harness_id} has no turns")
    first = turns[0]
    completion = list(first.completion_ids)
    mask = [1] * len(completion)
    for prev, nxt in zip(turns, turns[1:]):
        obs = _observation_text(tokenizer, prev, nxt)
        if obs is None:
            if not _warned_fallback:
                log.warning("chat template is not prefix-stable across turns; multi-turn episodes train on "
                            "their last turn only")
                _warned_fallback = True
            last = turns[-1]
            return Episode(enc(last.prompt), list(last.completion_ids), [1] * len(last.completion_ids),
                           multi_turn=True, fallback=True)
        obs_ids = enc(obs)
        completion += obs_ids + list(nxt.completion_ids)
        mask += [0] * len(obs_ids) + [1] * len(nxt.completion_ids)
    if not completion:  # an empty generation: keep TRL's tensors non-empty (masked out)
        completion, mask = [tokenizer.eos_token_id], [0]
    return Episode(enc(first.prompt), completion, mask, multi_turn=len(turns) > 1)


# ---------------------------------------------------------------------------- the trainer thread
class _Stopped(Exception):
    """Raised inside the trainer thread to unwind ``train()`` when the learner is closed."""


_STOP = object()


class _Gate:
    """Hands optimizer steps from the caller to the trainer thread, one at a time."""

    def __init__(self):
        self.permits: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.idle = threading.Event()  # set while the trainer thread is parked (or gone)

    def park(self) -> None:  # trainer thread
        self.idle.set()
        if self.permits.get() is _STOP:
            raise _Stopped()

    def grant(self, item: Any = 1) -> None:  # caller
        self.idle.clear()
        self.permits.put(item)


def _make_callback(learner: "SlowLearner"):
    from transformers import TrainerCallback

    class _StepGate(TrainerCallback):
        """Parks the trainer thread before each optimizer step; records each step's logs."""

        def on_step_begin(self, args, state, control, **kwargs):
            learner._gate.park()
            learner._step_t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # per-step training logs (not the final train() summary)
                learner._on_step_logged(dict(logs))

    return _StepGate()


def _install_copy_guard(module) -> None:
    """TRL patches ``forward`` on the model instance with a closure over the *original* module's forward,
    so ``copy.deepcopy`` of a trained model would silently run the original's weights. This makes a
    deep copy drop the patch (the copy gets its class's plain forward)."""
    if "forward" not in module.__dict__ or "__deepcopy__" in module.__dict__:
        return

    def __deepcopy__(memo, _m=module):
        saved = {k: _m.__dict__.pop(k) for k in ("forward", "__deepcopy__") if k in _m.__dict__}
        try:
            return copy.deepcopy(_m, memo)
        finally:
            _m.__dict__.update(saved)

    module.__dict__["__deepcopy__"] = __deepcopy__


def _reference(peft_model):
    """Context in which a PEFT model computes the start weights, as TRL's KL reference does: the frozen
    "ref" adapter when TRL made one (training continued an existing adapter), else adapters disabled."""
    from trl.trainer.utils import use_adapter

    return use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None)


class _AdapterDisabled:
    """A model view that runs a PEFT model as its start weights (:func:`_reference`), without a copy."""

    def __init__(self, peft_model):
        self._m = peft_model

    def generate(self, *args, **kwargs):
        with _reference(self._m):
            return self._m.generate(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        with _reference(self._m):
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
                 config: SlowConfig | None = None, output_dir: str | os.PathLike | None = None):
        from fst_lab import backends

        self.config = config = config or SlowConfig()
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="fst-slow-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = policy.tokenizer
        self._source_policy = policy
        self.backend = backends.resolve_backend(config, policy)

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
        self._task = task
        self._examples: list = []
        self._task_start_step = 0
        self._orders: dict[int, list[int]] = {}
        self.set_task(task)
        self._probe_harness = self._population[0]
        self._probe_examples: list | None = None
        self._probe_cache: dict = {}  # (harness id, example id, length) -> base log-probs on the response

        model, peft_config = backends.prepare_model(policy, config, self.backend)
        self._base_copy = None
        if not config.lora and (config.beta or config.kl_probe_size):
            # Full fine-tuning: the start weights need their own frozen copy (TRL builds its KL reference
            # from a path, so hand it this snapshot's folder).
            self._base_copy = _fresh_copy(model)
            if config.beta:
                snap = self.output_dir / "base_model"
                self._base_copy.save_pretrained(snap, safe_serialization=True)
                model.config._name_or_path = str(snap)

        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        mcl = config.max_completion_length or max(h.loop.max_new_tokens for h in self._population)
        args = GRPOConfig(
            output_dir=str(self.output_dir),
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=per_device // micro,
            num_generations=G,
            max_completion_length=mcl,
            temperature=config.temperature, top_p=1.0, top_k=0,
            loss_type=config.loss_type, epsilon=config.epsilon, epsilon_high=config.epsilon_high,
            beta=config.beta, scale_rewards=config.scale_rewards, num_iterations=1,
            learning_rate=config.learning_rate, adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2,
            adam_epsilon=config.adam_epsilon, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
            lr_scheduler_type="constant_with_warmup", max_grad_norm=config.max_grad_norm,
            max_steps=10**9,  # unbounded: step() decides how many run
            logging_strategy="steps", logging_steps=1, save_strategy="no", report_to=config.report_to,
            disable_tqdm=True, seed=config.seed, gradient_checkpointing=config.gradient_checkpointing,
            disable_dropout=True, remove_unused_columns=False, log_completions=False,
            use_vllm=config.use_vllm, vllm_mode=config.vllm_mode,
            vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            vllm_importance_sampling_correction=False,  # rollouts don't carry vLLM's sampling logprobs
            dataloader_num_workers=0, ddp_find_unused_parameters=False,
            **backends.device_args(self.backend),
        )
        if args.world_size != P:  # pragma: no cover - defensive
            raise RuntimeError(f"world size from the environment ({P}) != the trainer's ({args.world_size})")
        dataset = Dataset.from_dict({"prompt": [f"fst-slot-{i}" for i in range(_N_SLOTS)]})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*rollout_func.*experimental.*")
            self.trainer = GRPOTrainer(model=model, reward_funcs=[_make_reward_fn()], args=args,
                                       train_dataset=dataset, processing_class=self.tokenizer,
                                       peft_config=peft_config, rollout_func=self._rollout,
                                       callbacks=[_make_callback(self)])
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for cb in (PrinterCallback, ProgressCallback):  # step() returns the metrics; don't print them
            self.trainer.remove_callback(cb)
        _install_copy_guard(self.trainer.model.get_base_model() if config.lora else self.trainer.model)
        if self.trainer.ref_model is not None:  # TRL loaded the start weights itself: one copy is enough
            self._base_copy = None
        self._gen_policy = backends.generation_policy(self.trainer, policy, config, self.backend)

        self._gate = _Gate()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._step_t0 = 0.0
        self._samples_seen = 0
        self._step_population: tuple[Harness, ...] = self._population
        self.history: list[dict] = []
        self.last_trajectories: list = []  # this process's rollouts of the latest step (for the fast loop / UI)
        self.last_episodes: list[Episode] = []

    # ------------------------------------------------------------------ public state
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (restored by :meth:`load_state`)."""
        return int(self.trainer.state.global_step)

    @property
    def samples_seen(self) -> int:
        """Completions generated for RL so far (all processes)."""
        return self._samples_seen

    @property
    def population(self) -> tuple[Harness, ...]:
        return self._population

    @property
    def task(self) -> "Task":
        return self._task

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
            model: Any = _AdapterDisabled(self.trainer.model)
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
        exs = list(examples) if examples is not None else list(task.examples("train"))
        if not exs:
            raise ValueError(f"task {getattr(task, 'name', task)!r} has no training examples")
        self._task, self._examples, self._orders = task, exs, {}
        self._task_start_step = self.global_step if hasattr(self, "trainer") else 0

    # ------------------------------------------------------------------ stepping
    def step(self, n: int = 1) -> list[dict]:
        """Run ``n`` optimizer steps and return one metrics dict per step.

        Keys include ``reward``/``reward_std`` (all rollouts), ``reward/h{i}``/``reward_std/h{i}`` (population
        slot i) and ``reward_by_harness`` (by harness id), ``kl`` (TRL's KL to the start weights on the step's
        tokens, when beta > 0), ``kl_probe``/``kl_probe_bare`` (fixed probe, with/without a harness),
        ``entropy``, ``completion_length`` (model tokens per rollout), ``tokens``, ``samples``,
        ``samples_seen``, ``step_seconds``, ``loss``, ``learning_rate``, ``global_step``, ``population``.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        start = len(self.history)
        self._ensure_started()
        for _ in range(n):
            self._wait_idle()  # a step interrupted by Ctrl-C finishes in the background first
            self._gate.grant()
            self._wait_idle()
        return self.history[start:]

    def close(self) -> None:
        """End the trainer thread (the learner can't step afterwards). Idempotent."""
        t = self._thread
        if t is not None and t.is_alive():
            try:
                self._wait_idle()
            except RuntimeError:
                pass
            self._gate.grant(_STOP)
            t.join(timeout=60)
        self._thread = None

    def __enter__(self) -> "SlowLearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ensure_started(self, resume: str | None = None) -> None:
        if self._thread is not None:
            self._wait_idle()
            return
        self._gate.idle.clear()
        self._thread = threading.Thread(target=self._train_thread, args=(resume,), daemon=True,
                                        name="fst-slow-trainer")
        self._thread.start()
        self._wait_idle()  # parked before step 1: optimizer, scheduler and (on resume) state are loaded

    def _train_thread(self, resume: str | None) -> None:
        try:
            self.trainer.train(resume_from_checkpoint=resume)
            self._error = RuntimeError("the trainer finished its (unbounded) schedule")
        except _Stopped:
            pass
        except BaseException as e:  # surfaced to the caller by _wait_idle
            self._error = e
        finally:
            self._gate.idle.set()

    def _wait_idle(self) -> None:
        while not self._gate.idle.wait(timeout=0.2):
            if self._thread is None or not self._thread.is_alive():
                break
        if self._error is not None:
            raise RuntimeError(f"the slow loop's trainer failed: {type(self._error).__name__}: {self._error}. "
                               "This learner can't continue; build a new one (load_state resumes from a "
                               "checkpoint).") from self._error
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the slow loop's trainer is not running (closed?)")

    # ------------------------------------------------------------------ generation (inside TRL's step)
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

    def _rollout(self, prompts: list, trainer) -> dict:
        """TRL's ``rollout_func``: per-rollout harness prompts, multi-turn rollouts with tools, scores."""
        from fst_lab.rollout import rollout_pairs

        cfg, G = self.config, self.config.num_generations
        n = len(prompts)
        if n % G:
            raise RuntimeError(f"TRL handed {n} prompts to one process, not whole groups of G={G}")
        pop = self._population  # one snapshot for the whole step
        per = G // len(pop)
        offset = trainer.accelerator.process_index * n  # global position of this process's first rollout
        step = trainer.state.global_step
        pairs, slots = [], []
        for j in range(n):
            pos = offset + j
            slots.append((pos % G) // per)
            pairs.append((pop[slots[-1]], self._example_for(step, pos // G)))
        trajs = rollout_pairs(self._gen_policy, pairs, self._task, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_completion_length, batch_size=cfg.rollout_batch_size)
        episodes = [episode_tokens(self.tokenizer, t) for t in trajs]
        rewards = [float(t.reward) for t in trajs]
        masks = [list(e.mask) for e in episodes]
        dropped = [0.0] * n
        if cfg.drop_zero_variance_groups:
            for g0 in range(0, n, G):
                rs = rewards[g0:g0 + G]
                if max(rs) - min(rs) < 1e-12:
                    for i in range(g0, g0 + G):
                        masks[i] = [0] * len(masks[i])
                        dropped[i] = 1.0
        self._step_population = pop
        self.last_trajectories, self.last_episodes = trajs, episodes
        self._samples_seen += n * trainer.accelerator.num_processes
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": None,
            "env_mask": masks,
            "fst_reward": rewards,
            "fst_slot": slots,
            "fst_dropped": dropped,
            "fst_model_tokens": [float(e.model_tokens) for e in episodes],
            "fst_obs_tokens": [float(e.observation_tokens) for e in episodes],
            "fst_tool_calls": [float(len(t.tool_calls)) for t in trajs],
            "fst_turns": [float(t.n_turns) for t in trajs],
        }

    # ------------------------------------------------------------------ per-step record (trainer thread)
    def _on_step_logged(self, logs: dict) -> None:
        seconds = time.perf_counter() - self._step_t0
        cfg = self.config
        pop = self._step_population
        rec: dict[str, Any] = {"global_step": self.global_step}
        slot_mean: dict[int, float] = {}
        for key in list(logs):
            if key.startswith("harness/") and key.endswith("/reward"):
                k = int(key.split("/")[1])
                mean = logs.pop(key)
                sq = logs.pop(f"harness/{k}/reward_sq", None)
                if mean is None:
                    continue
                slot_mean[k] = mean
                rec[f"reward/h{k}"] = mean
                rec[f"reward_std/h{k}"] = math.sqrt(max(0.0, (sq or 0.0) - mean * mean))
        for key in list(logs):
            if key.startswith("harness/") and key.endswith("/reward_sq"):
                logs.pop(key)
        by_id: dict[str, list[float]] = {}
        for k, mean in slot_mean.items():
            if k < len(pop):
                by_id.setdefault(pop[k].id, []).append(mean)
        rec.update(logs)
        rec["reward_by_harness"] = {hid: sum(v) / len(v) for hid, v in by_id.items()}
        mt = logs.get("fst/model_tokens")
        samples = cfg.prompts_per_step * cfg.num_generations
        rec["completion_length"] = mt
        rec["tokens"] = None if mt is None else mt * samples
        rec["samples"] = samples
        rec["samples_seen"] = self._samples_seen
        rec["step_seconds"] = seconds
        rec["population"] = [h.id for h in pop]
        if cfg.kl_probe_size:
            try:
                rec["kl_probe"] = self.kl_probe("probe")
                rec["kl_probe_bare"] = self.kl_probe(None)
            except Exception as e:  # a diagnostic never stops training
                log.warning("kl probe failed: %s", e)
        self.history.append(rec)

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
        """Mean per-token KL(pi_theta || pi_base) (exact, over the full vocabulary) on fixed sequences.

        Each probe sequence is a prompt plus the reference response ``"Answer: <answer>"``; the KL is
        averaged over the response positions. ``harness="probe"`` renders prompts with the first harness of
        the initial population (fixed for the run, so the curve is comparable across GEPA rounds); ``None``
        uses the bare question (no system prompt, no few-shot); or pass any Harness. The base is the
        adapter-disabled model (LoRA) or the frozen start copy (full fine-tuning).
        """
        import torch

        exs = list(examples) if examples is not None else self.probe_examples()
        h = self._probe_harness if harness == "probe" else harness
        model = self.trainer.model
        base = self._base_model()
        tok = self.tokenizer
        device = next(model.parameters()).device

        def response_logprobs(m, ids, n):  # log-softmax at the n positions that predict the response
            logits = m(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1]
            return torch.log_softmax(logits.float(), -1)

        was_training = model.training
        model.eval()
        kls = []
        try:
            with torch.no_grad():
                for ex in exs:
                    if h is not None:
                        messages, tools = h.render(ex.inputs)
                    else:
                        messages = [{"role": "user", "content": "\n\n".join(str(v) for v in ex.inputs.values())}]
                        tools = None
                    p_ids = tok(render_chat(tok, messages, tools), add_special_tokens=False)["input_ids"]
                    t_ids = tok(f"Answer: {ex.answer}{tok.eos_token or ''}", add_special_tokens=False)["input_ids"]
                    ids = torch.tensor([p_ids + t_ids], device=device)
                    logp = response_logprobs(model, ids, len(t_ids))
                    # The start weights never change: their log-probs are computed once per probe sequence.
                    key = (h.id if h is not None else None, ex.id, len(p_ids) + len(t_ids))
                    logq = self._probe_cache.get(key)
                    if logq is None:
                        if base is None:
                            with _reference(model):
                                logq = response_logprobs(model, ids, len(t_ids))
                        else:
                            logq = response_logprobs(base, ids, len(t_ids))
                        self._probe_cache[key] = logq
                    kls.append((logp.exp() * (logp - logq)).sum(-1))
        finally:
            model.train(was_training)
        return float(torch.cat(kls).mean()) if kls else float("nan")

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
        from safetensors.torch import load_file

        d = Path(directory)
        model = self.trainer.model
        if self.config.lora:
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

    # ------------------------------------------------------------------ resume
    def save_state(self, directory: str | os.PathLike) -> Path:
        """Everything needed to resume: weights (safetensors), optimizer, scheduler, RNG states, trainer
        state and the learner's own state (``fst_state.json``, written last). The layout is an HF Trainer
        checkpoint, so :meth:`load_state` resumes through TRL/HF's own code."""
        import numpy as np
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
        from transformers.trainer_callback import ExportableState

        self._ensure_started()  # the optimizer and scheduler exist once train() has set up
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
        if self._thread is not None:
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
        self._ensure_started(resume=str(d))


def _env_world_size() -> int:
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def _make_reward_fn():
    """TRL reward function: the task score computed in the rollout, plus per-harness metrics."""

    def task_reward(prompts, completions, fst_reward, fst_slot, fst_dropped, fst_model_tokens, fst_obs_tokens,
                    fst_tool_calls, fst_turns, log_metric=None, **_):
        if log_metric is not None:
            for i, (r, k) in enumerate(zip(fst_reward, fst_slot)):
                log_metric(f"harness/{k}/reward", r)
                log_metric(f"harness/{k}/reward_sq", r * r)
                log_metric("fst/dropped_groups", fst_dropped[i])
                log_metric("fst/model_tokens", fst_model_tokens[i])
                log_metric("fst/observation_tokens", fst_obs_tokens[i])
                log_metric("fst/tool_calls", fst_tool_calls[i])
                log_metric("fst/turns", fst_turns[i])
        return list(fst_reward)

    return task_reward


def _fresh_copy(model):
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
