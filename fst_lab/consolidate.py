"""Consolidation: distil the evolved harness into the weights, so the policy keeps the gain without the prompt.

After FST, much of the gain lives in the harness (a long system prompt and few-shot conversations, hundreds
of tokens on every query). A consolidation step moves it into the weights:

* **teacher** = the policy conditioned on the evolved harness (the best one, or each population member for
  its share of the samples);
* **student** = the same policy under a minimal harness (``student: none | seed | short``);
* **on-policy**: the student samples completions for training problems under the minimal harness
  (:func:`fst_lab.rollout.rollout_pairs`: batched, multi-turn, tools executed); the loss is the per-token
  **reverse KL** KL(student || teacher) over the vocabulary (full, or the student's top-k plus a tail
  bucket) at every token the student generated, the teacher reading the same tokens in *its* context
  (evolved harness prompt + the student's completion). Tool observations carry no loss.

    >>> c = Consolidator(policy, task, [best_harness], minimal_harness(seed, "short"), ConsolidateConfig())
    >>> c.heldout_kl()          # student-vs-teacher per-token KL on held-out prompts
    >>> c.step(4)               # four optimizer steps -> one metrics dict each
    >>> c.heldout_kl()          # lower

``method="sft"`` is the cheaper variant (DSPy BetterTogether's idea): the teacher samples under its
harness, the completions with reward >= ``sft_min_reward`` are re-rendered under the minimal harness and
trained on with TRL's ``SFTTrainer`` (completion-only loss, tool observations masked).

**RL + distillation.** :class:`DistillTerm` is a ``SlowLearner.extra_loss``: each RL step also pulls the
minimal-harness policy towards the harness-conditioned one on the step's own rollouts, with coefficient
lambda (``rl_coef``). lambda = 0 returns ``None``, so the slow loop's loss is TRL's, bit for bit.

**Teacher: a frozen snapshot, taken when consolidation starts.** The teacher must be the *current trained*
policy with the evolved harness. With LoRA, "adapter disabled" would be the start weights, not that policy,
so it is wrong here. The live weights without gradient would be right at the first step but would drift with
every update: the student would chase a moving target made of itself, and a step that lowers the KL would
also move the teacher. A frozen copy of the weights at the start of a consolidation phase is the stable
choice (TRL's SDFT calls it ``teacher_model_kind="base"`` when it is the initial student); it costs one copy
of the model (135M: ~0.5 GB) and is saved with the checkpoint (its trainable tensors), so a resumed phase
distils from the same teacher. In RL + distillation the teacher is the live model under ``torch.no_grad``:
there the weights move by RL anyway and the term only has to pull the bare-prompt policy along with it.

**What TRL gives and what is glue.** TRL 1.16 ships on-policy distillation (``trl.DistillationTrainer``,
GKD: a *different* teacher model reading the *same* prompt; GOLD in ``trl.experimental``) and on-policy
self-distillation (``trl.experimental.sdft.SDFTTrainer``: the same model, the teacher's prompt = the student's
plus privileged context). SDFT is the closest; its losses are used here: ``trl.experimental.sdft.loss_utils`` (``compute_full_logit_self_distillation_loss`` /
``compute_topk_self_distillation_loss`` with ``distillation_alpha=1.0`` = reverse KL). Their trainers are
not: SDFT builds the teacher prompt as the student's last user turn plus a text block (our teacher context
is a different system prompt, few-shot *conversations* and tool specs), generates single-turn with its own
``generate`` (our rollouts are multi-turn with executed tool calls) and runs its own ``train()`` loop, while
the weights here are the live slow-loop model whose GRPO trainer is parked between steps. So this module
writes the glue only: rollouts through ``rollout_pairs``, token alignment through
:func:`fst_lab.slow.episode_tokens`, the two contexts, and an AdamW step over the trainable parameters.
The SFT variant uses ``SFTTrainer`` as is (pre-tokenised ``input_ids`` + ``completion_mask``).

Run it from a run directory: ``fst-lab consolidate RUN --steps 4`` or ``Session.resume(RUN).consolidate(4)``
or the schedule token ``c`` (``"p -> w*6 -> c*2"``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fst_lab.config import CONSOLIDATE_KL_SUPPORTS as KL_SUPPORTS  # noqa: F401  (re-exported)
from fst_lab.config import CONSOLIDATE_METHODS as METHODS  # noqa: F401
from fst_lab.config import CONSOLIDATE_STUDENTS as STUDENTS
from fst_lab.config import CONSOLIDATE_TEACHERS as TEACHERS  # noqa: F401
from fst_lab.config import ConfigError, ConsolidateConfig  # noqa: F401  (ConsolidateConfig lives with FSTConfig)
from fst_lab.errors import FstLabError
from fst_lab.harness import Harness, atomic_write_text
from fst_lab.runs import CONSOLIDATE_DIR, CONSOLIDATE_STATE, TEACHER_WEIGHTS

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.models import Policy
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger(__name__)

STATE_FILE = CONSOLIDATE_STATE  # in a session checkpoint: <checkpoint>/consolidate/
STATE_FORMAT = 1
DEFAULT_SHORT_PROMPT = "Solve the task."


class ConsolidationError(FstLabError, RuntimeError):
    """Consolidation can't run as asked (e.g. no harness has evolved yet: nothing to distil)."""


# ---------------------------------------------------------------------------- harnesses
def minimal_harness(seed: Harness, mode: str = "short", system_prompt: str = "") -> Harness:
    """The student's harness. ``none``: the example's inputs alone (no system prompt, few-shot or tools);
    ``seed``: ``seed`` itself; ``short``: the seed's task template, tools and loop with a one-line system
    prompt and no few-shot."""
    if mode == "seed":
        return seed
    d = seed.to_dict(with_lineage=False)
    d["few_shot"] = []
    if mode == "none":
        d.update(name=f"{seed.name}-bare", system_prompt="", tools=[], evolvable=["system_prompt"],
                 task_template="\n\n".join("{" + k + "}" for k in seed.inputs))
        d["loop"] = {**d.get("loop", {}), "max_turns": 1}
    elif mode == "short":
        text = system_prompt.strip() or f"{DEFAULT_SHORT_PROMPT} {seed.loop.answer_format}".strip()
        d.update(name=f"{seed.name}-short", system_prompt=text)
        d["evolvable"] = [c for c in d.get("evolvable", []) if c != "few_shot"] or ["system_prompt"]
    else:
        raise ConfigError(f"must be one of {' | '.join(STUDENTS)}, got {mode!r}", path="consolidate.student")
    d["lineage"] = {"parents": [seed.id], "origin": "seed", "round": 0, "note": f"consolidation student ({mode})"}
    return Harness.from_dict(d, source=f"<minimal harness: {mode}>")


def evolved_teachers(population: Sequence[Harness], seed: Harness, mode: str = "best",
                     scores: dict[str, float] | None = None) -> list[Harness]:
    """The teacher harnesses: the best evolved one, or every population member. Raises
    :class:`ConsolidationError` when nothing has evolved (the population is the seed alone)."""
    evolved = [h for h in population if h.id != seed.id]
    if not evolved:
        raise ConsolidationError(
            "nothing to distil: the population holds only the seed harness (no fast step has evolved one). "
            "Run a fast step first (schedule 'p', session.fast_step()), then consolidate.")
    scores = scores or {}
    ranked = sorted(population, key=lambda h: -scores.get(h.id, float("-inf")))
    if mode == "best":  # the best *evolved* harness (the seed's gain needs no distilling)
        return [next(h for h in ranked if h.id != seed.id)]
    return list(ranked)


# ---------------------------------------------------------------------------- tokens and KL
def prompt_ids(tokenizer, harness: Harness, example: "Example") -> list[int]:
    """Token ids of ``harness`` rendered for ``example`` (chat template, ready for the assistant turn)."""
    from fst_lab.models import render_chat

    messages, tools = harness.render(example.inputs)
    return tokenizer(render_chat(tokenizer, messages, tools), add_special_tokens=False)["input_ids"]


@dataclass
class DistillItem:
    """One completion seen in two contexts: ``completion`` after the student's and the teacher's prompt;
    ``mask`` = 1 on tokens the student generated (0 on tool observations)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    completion: list[int]
    mask: list[int]
    teacher_id: str = ""
    example_id: str = ""

    @property
    def tokens(self) -> int:
        return int(sum(self.mask))


def completion_logits(model, prompt: Sequence[int], completion: Sequence[int]):
    """Logits at the positions that predict ``completion`` after ``prompt``: shape [len(completion), vocab]."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(completion)], device=device)
    n = len(completion)
    return model(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1].float()


def _loss_utils():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.sdft import loss_utils

    return loss_utils


def token_kl(student_logits, teacher_logits, support: str = "full", top_k: int = 64):
    """Per-position reverse KL(student || teacher) (TRL's self-distillation divergence with alpha = 1)."""
    lu = _loss_utils()
    if support == "topk":
        k = min(int(top_k), student_logits.shape[-1])
        return lu.compute_topk_self_distillation_loss(student_logits, teacher_logits, distillation_topk=k,
                                                      distillation_alpha=1.0, distillation_add_tail=True)
    return lu.compute_full_logit_self_distillation_loss(student_logits, teacher_logits, distillation_alpha=1.0)


def mean_kl(student_model, teacher_model, items: Sequence[DistillItem], *, support: str = "full",
            top_k: int = 64) -> float:
    """Mean per-token KL(student || teacher) over the masked tokens of ``items`` (no gradient). With
    ``teacher_model=None`` the student model reads the teacher's context itself (the live teacher)."""
    import torch

    teacher_model = teacher_model if teacher_model is not None else student_model
    tot, n = 0.0, 0
    with torch.no_grad(), _eval_mode(student_model), _eval_mode(teacher_model):
        for it in items:
            if not it.tokens:
                continue
            s = completion_logits(student_model, it.student_prompt, it.completion)
            t = completion_logits(teacher_model, it.teacher_prompt, it.completion)
            m = torch.tensor(it.mask, dtype=s.dtype, device=s.device)
            tot += float((token_kl(s, t, support, top_k) * m).sum())
            n += it.tokens
    return tot / n if n else float("nan")


class _eval_mode:
    """Context: the model in eval mode (no dropout), restored afterwards."""

    def __init__(self, model):
        self.model, self.was = model, bool(getattr(model, "training", False))

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def frozen_copy(model):
    """An independent, frozen copy of ``model`` (the teacher snapshot). Its formerly trainable parameters are
    listed in ``model._fst_snapshot_names`` so that exactly those can be saved and restored (a deepcopy of a
    PEFT model guarded by :func:`fst_lab.backends.install_copy_guard` comes back as the inner model, with the
    LoRA layers but other parameter names)."""
    m = copy.deepcopy(model)
    names = trainable_names(m)
    m.requires_grad_(False)
    m.eval()
    m._fst_snapshot_names = names
    return m


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def heldout_items(policy: "Policy", task: "Task", student: Harness, teachers: Sequence[Harness],
                  examples: Sequence["Example"], *, max_new_tokens: int | None = None) -> list[DistillItem]:
    """Fixed sequences for a held-out KL: the student's greedy completions under its harness on
    ``examples``; example i is read by teacher ``teachers[i % K]``."""
    from fst_lab.rollout import rollout_pairs
    from fst_lab.slow import episode_tokens

    exs = list(examples)
    trajs = rollout_pairs(policy, [(student, ex) for ex in exs], task, temperature=0.0,
                          max_new_tokens=max_new_tokens)
    tok = policy.tokenizer
    items = []
    for i, (ex, t) in enumerate(zip(exs, trajs)):
        ep = episode_tokens(tok, t)
        th = teachers[i % len(teachers)]
        items.append(DistillItem(ep.prompt_ids, prompt_ids(tok, th, ex), list(ep.completion_ids), list(ep.mask),
                                 teacher_id=th.id, example_id=ex.id))
    return items


# ---------------------------------------------------------------------------- the step
class Consolidator:
    """Distils ``teachers`` (evolved harnesses, read by a frozen snapshot of the current weights) into
    ``policy`` under the ``student`` harness, one optimizer step at a time.

    ``policy.model`` is trained in place: its trainable parameters (the slow loop's LoRA adapter, or a
    fresh one of rank ``lora_r``, or all weights with ``lora_r=0``). The teacher snapshot is taken at
    construction, i.e. when consolidation starts.

        >>> from fst_lab.models import tiny_policy
        >>> c = Consolidator(tiny_policy(), task, [evolved], minimal_harness(seed, "none"),
        ...                  ConsolidateConfig(prompts_per_step=2, max_new_tokens=8))
        >>> c.step(1)[-1]["kl_teacher"]          # mean per-token KL(student || teacher) on the step's samples
    """

    def __init__(self, policy: "Policy", task: "Task", teachers: Sequence[Harness], student: Harness,
                 config: ConsolidateConfig | None = None, *, teacher_model=None, examples=None):
        import torch

        from fst_lab.models import Policy

        self.config = cfg = config or ConsolidateConfig()
        self.teachers = tuple(teachers)
        if not self.teachers:
            raise ConsolidationError("consolidation needs at least one teacher harness")
        if cfg.method == "kl" and cfg.teacher == "population" and cfg.samples_per_prompt % len(self.teachers):
            raise ConfigError(f"samples_per_prompt={cfg.samples_per_prompt} must be a multiple of the "
                              f"{len(self.teachers)} teacher harnesses (teacher='population')",
                              path="consolidate.samples_per_prompt")
        self.student = student
        self.task = task
        self._examples = list(examples) if examples is not None else list(task.examples("train"))
        if not self._examples:
            raise ConsolidationError(f"task {getattr(task, 'name', task)!r} has no training examples")
        model = policy.model
        if not _is_peft(model) and cfg.lora_r > 0:
            model = _add_lora(model, cfg.lora_r, cfg.seed)
        elif not _is_peft(model):
            model.requires_grad_(True)
        self.policy = Policy(model=model, tokenizer=policy.tokenizer, name=policy.name, path=policy.path,
                             backend=policy.backend)
        self.tokenizer = policy.tokenizer
        # The teacher: a frozen snapshot of the weights as they are now (see the module docstring).
        self.teacher_model = teacher_model if teacher_model is not None else frozen_copy(model)
        self._names = trainable_names(model)
        if not self._names:
            raise ConsolidationError("the policy has no trainable parameters")
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0)
        self.steps_done = 0
        self.samples = 0
        self.history: list[dict] = []
        self.last_trajectories: list = []
        self._heldout: list[DistillItem] | None = None

    # ------------------------------------------------------------------ data
    def _examples_for(self, step: int) -> list["Example"]:
        """Problems of step ``step``: seeded shuffled passes over the training examples."""
        n, exs = self.config.prompts_per_step, self._examples
        out = []
        for j in range(n):
            epoch, k = divmod(step * n + j, len(exs))
            order = list(range(len(exs)))
            random.Random(f"fst-consolidate|{self.config.seed}|{epoch}").shuffle(order)
            out.append(exs[order[k]])
        return out

    def _teacher_for(self, sample: int) -> Harness:
        return self.teachers[sample % len(self.teachers)] if self.config.teacher == "population" else self.teachers[0]

    # ------------------------------------------------------------------ stepping
    def step(self, n: int = 1) -> list[dict]:
        """``n`` consolidation steps; one metrics dict each (``kl_teacher``, ``reward``, ``rollouts``, ...)."""
        out = []
        for _ in range(n):
            rec = self._sft_step() if self.config.method == "sft" else self._kl_step()
            self.steps_done += 1
            self.history.append(rec)
            out.append(rec)
        return out

    def _sample_seed(self) -> int:
        return (self.config.seed * 1_000_003 + self.steps_done * 7919) % (2**31)

    def _kl_step(self) -> dict:
        import torch

        from fst_lab.rollout import rollout_pairs
        from fst_lab.slow import episode_tokens

        cfg, t0 = self.config, time.perf_counter()
        exs = self._examples_for(self.steps_done)
        pairs = [(self.student, ex) for ex in exs for _ in range(cfg.samples_per_prompt)]
        trajs = rollout_pairs(self.policy, pairs, self.task, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=self._sample_seed())
        tok, items = self.tokenizer, []
        teacher_prompts: dict[tuple[str, str], list[int]] = {}
        for i, ((_, ex), t) in enumerate(zip(pairs, trajs)):
            th = self._teacher_for(i % cfg.samples_per_prompt)
            key = (th.id, ex.id)
            if key not in teacher_prompts:
                teacher_prompts[key] = prompt_ids(tok, th, ex)
            ep = episode_tokens(tok, t)
            items.append(DistillItem(ep.prompt_ids, teacher_prompts[key], list(ep.completion_ids), list(ep.mask),
                                     teacher_id=th.id, example_id=ex.id))
        model, teacher = self.policy.model, self.teacher_model
        total = sum(it.tokens for it in items)
        kl_sum = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        with _eval_mode(model):  # no dropout; gradients still flow
            for it in items:  # one sequence at a time: no padding to get wrong, little memory
                if not it.tokens:
                    continue
                with torch.no_grad():
                    t_logits = completion_logits(teacher, it.teacher_prompt, it.completion)
                s_logits = completion_logits(model, it.student_prompt, it.completion)
                m = torch.tensor(it.mask, dtype=s_logits.dtype, device=s_logits.device)
                kl = (token_kl(s_logits, t_logits, cfg.kl_support, cfg.top_k) * m).sum()
                (kl / total).backward()
                kl_sum += float(kl.detach())
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                                         else float("inf")))
        if total:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.samples += len(trajs)
        self.last_trajectories = trajs
        return self._record(trajs, t0, kl_teacher=kl_sum / total if total else float("nan"), grad_norm=grad_norm,
                            tokens=total)

    def _record(self, trajs, t0: float, **fields) -> dict:
        rewards = [float(t.reward) for t in trajs]
        mean = sum(rewards) / len(rewards) if rewards else float("nan")
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else float("nan")
        return {"step": self.steps_done + 1, "method": self.config.method,
                "student": self.config.student, "student_harness": self.student.id,
                "teacher": [h.id for h in self.teachers], "reward": mean, "reward_std": std,
                "rollouts": len(trajs), **fields, "step_seconds": time.perf_counter() - t0}

    def _sft_step(self) -> dict:
        """Teacher samples under its harness; the good ones, re-rendered under the student's harness, train
        the student with TRL's SFTTrainer (one optimizer step)."""
        from fst_lab.rollout import rollout_pairs
        from fst_lab.slow import episode_tokens

        cfg, t0 = self.config, time.perf_counter()
        exs = self._examples_for(self.steps_done)
        pairs = [(self._teacher_for(s), ex) for ex in exs for s in range(cfg.samples_per_prompt)]
        teacher_policy = dataclasses.replace(self.policy, model=self.teacher_model)
        trajs = rollout_pairs(teacher_policy, pairs, self.task, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=self._sample_seed())
        tok = self.tokenizer
        rows = {"input_ids": [], "completion_mask": []}
        for (_, ex), t in zip(pairs, trajs):
            if t.reward < cfg.sft_min_reward:
                continue
            ep = episode_tokens(tok, t)
            if not ep.model_tokens:
                continue
            sp = prompt_ids(tok, self.student, ex)
            rows["input_ids"].append(sp + list(ep.completion_ids))
            rows["completion_mask"].append([0] * len(sp) + list(ep.mask))
        kept = len(rows["input_ids"])
        loss = float("nan")
        if kept:
            loss = self._sft_train(rows)
        self.samples += len(trajs)
        self.last_trajectories = trajs
        return self._record(trajs, t0, kept=kept, loss=loss,
                            tokens=sum(sum(m) for m in rows["completion_mask"]))

    def _sft_train(self, rows: dict) -> float:
        import tempfile
        import warnings

        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl import SFTConfig, SFTTrainer

        cfg, model = self.config, self.policy.model
        bars = is_progress_bar_enabled()
        disable_progress_bar()  # "Building labels ..." for a handful of rows
        try:
            with tempfile.TemporaryDirectory(prefix="fst-sft-") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # transformers' checkpointing-rename FutureWarnings
                args = SFTConfig(output_dir=tmp, max_steps=1, per_device_train_batch_size=len(rows["input_ids"]),
                                 learning_rate=cfg.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                                 weight_decay=0.0, max_grad_norm=cfg.max_grad_norm, completion_only_loss=True,
                                 report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                                 seed=cfg.seed + self.steps_done, use_cpu=not _cuda(), bf16=False, fp16=False,
                                 gradient_checkpointing=False, dataloader_num_workers=0, max_length=None)
                trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                                     processing_class=self.tokenizer)
                for cb in (PrinterCallback, ProgressCallback):  # the step's record says it all
                    trainer.remove_callback(cb)
                out = trainer.train()
        finally:
            if bars:
                enable_progress_bar()
        return float(out.training_loss)

    # ------------------------------------------------------------------ diagnostics
    def heldout_kl(self, examples: Sequence["Example"] | None = None) -> float:
        """Per-token KL(student || teacher) on held-out prompts: the student's greedy completions (under its
        harness, drawn once and kept fixed) read by the current weights in the student's context and by
        the teacher snapshot in the teacher's. ``examples`` default: ``eval_size`` val problems."""
        if examples is not None or self._heldout is None:
            exs = list(examples) if examples is not None else \
                (list(self.task.examples("val", self.config.eval_size)) or self._examples[: self.config.eval_size])
            items = heldout_items(self.policy, self.task, self.student, self.teachers, exs,
                                  max_new_tokens=self.config.max_new_tokens)
            if examples is not None:
                return mean_kl(self.policy.model, self.teacher_model, items, support="full")
            self._heldout = items
        return mean_kl(self.policy.model, self.teacher_model, self._heldout, support="full")

    # ------------------------------------------------------------------ resume
    def save_state(self, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """Counters, harnesses, the consolidation optimizer, the teacher snapshot's trainable tensors and the
        student's (safetensors; the optimizer state through torch.save, loaded back with weights_only)."""
        import torch
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tparams = dict(self.teacher_model.named_parameters())
        tnames = getattr(self.teacher_model, "_fst_snapshot_names", None) or list(tparams)
        save_file({n: tparams[n].detach().contiguous().cpu() for n in tnames}, str(d / TEACHER_WEIGHTS))
        sparams = dict(self.policy.model.named_parameters())
        save_file({n: sparams[n].detach().contiguous().cpu() for n in self._names}, str(d / "student.safetensors"))
        torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
        meta = {"format": STATE_FORMAT, "steps_done": self.steps_done, "samples": self.samples,
                "config": self.config.to_dict(), "student": self.student.to_dict(),
                "teachers": [h.to_dict() for h in self.teachers], **(extra or {})}
        atomic_write_text(d / STATE_FILE, json.dumps(meta, indent=1))  # last: marks the folder complete
        return d

    def load_state(self, directory: str | os.PathLike, *, weights: bool = True) -> None:
        """Resume from :meth:`save_state`: counters, optimizer, teacher snapshot, and (``weights``) the
        student's trainable tensors. Build the Consolidator like the saved one first."""
        import torch
        from safetensors.torch import load_file

        d = Path(directory)
        f = d / STATE_FILE
        if not f.exists():
            raise ConsolidationError(f"{f} not found: not a complete consolidation checkpoint")
        meta = json.loads(f.read_text())
        if meta.get("format") != STATE_FORMAT:
            raise ConsolidationError(f"{f}: unknown consolidation checkpoint format {meta.get('format')!r}")
        saved = tuple(Harness.from_dict(h) for h in meta["teachers"])
        if [h.id for h in saved] != [h.id for h in self.teachers]:
            log.warning("%s: teachers differ from the saved ones (%s vs %s); using the saved ones", f,
                        [h.id for h in saved], [h.id for h in self.teachers])
            self.teachers = saved
        _load_named(self.teacher_model, load_file(str(d / TEACHER_WEIGHTS)), f"{d}/{TEACHER_WEIGHTS}")
        if weights:
            _load_named(self.policy.model, load_file(str(d / "student.safetensors")), f"{d}/student.safetensors")
        self.optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
        self.steps_done = int(meta["steps_done"])
        self.samples = int(meta["samples"])


    @staticmethod
    def saved_meta(directory: str | os.PathLike) -> dict | None:
        """The ``consolidate_state.json`` of a checkpoint folder, or None when there is none."""
        f = Path(directory) / STATE_FILE
        try:
            return json.loads(f.read_text()) if f.exists() else None
        except ValueError:
            return None


def load_teacher_snapshot(model, checkpoint_dir: str | os.PathLike) -> Path:
    """Load the pre-consolidation weights saved in a session checkpoint (``<checkpoint>/consolidate/teacher.safetensors``:
    the trained weights as they were when the consolidation phase began) into ``model`` (the checkpoint's weights
    loaded as a PEFT model or plain model); returns the file. Raises :class:`ConsolidationError` when there is none."""
    from safetensors.torch import load_file

    f = Path(checkpoint_dir) / CONSOLIDATE_DIR / TEACHER_WEIGHTS
    if not (f.parent / STATE_FILE).exists() or not f.exists():
        raise ConsolidationError(f"{f.parent}: no complete consolidation state in this checkpoint")
    _load_named(model, load_file(str(f)), str(f))
    return f


def _load_named(model, tensors: dict, source: str) -> None:
    """Copy ``tensors`` into ``model``'s parameters by name; a name saved from the inner model of a PEFT wrapper
    (the teacher snapshot's) also matches the wrapper's ``base_model.model.<name>``."""
    import torch

    params = dict(model.named_parameters())
    target = {n: n if n in params else f"base_model.model.{n}" for n in tensors}
    missing = [n for n, t in target.items() if t not in params]
    if missing:
        raise ConsolidationError(f"{source}: tensors {missing[:3]} do not match this model")
    with torch.no_grad():
        for n, t in tensors.items():
            p = params[target[n]]
            p.copy_(t.to(p.device, p.dtype))


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _add_lora(model, r: int, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, cfg)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------- RL + distillation
class DistillTerm:
    """``SlowLearner.extra_loss``: lambda * per-token KL(pi(. | minimal harness) || sg pi(. | harness)) on the
    RL step's own rollouts, added to TRL's loss in ``compute_loss``.

    TRL shuffles and slices the step's rows before the loss, so each row is mapped back to its problem by
    its (unpadded) prompt ids, which the learner's ``last_episodes`` / ``last_trajectories`` hold for the
    current step. The teacher is the live model without gradient, in the row's own harness context; the
    student is the same model with the minimal harness's prompt and the same completion tokens.
    ``coef == 0`` returns ``None``: TRL's loss, bit for bit.

        >>> learner.extra_loss = DistillTerm(learner, minimal_harness(seed, "short"), coef=0.1)
    """

    def __init__(self, learner, student: Harness, coef: float, *, support: str = "full", top_k: int = 64):
        self.learner, self.student, self.coef = learner, student, float(coef)
        self.support, self.top_k = support, top_k
        self._key = None
        self._map: dict[tuple, list[int]] = {}
        self._by_id: dict[str, Any] = {}
        self.last_kl: float | None = None
        self.values: list[float] = []

    def _rows(self) -> dict[tuple, tuple[list[int], list[int]]]:
        """(prompt ids, completion ids) of this step's rollouts -> (student prompt ids, model-token mask)."""
        eps = getattr(self.learner, "last_episodes", None) or []
        trajs = getattr(self.learner, "last_trajectories", None) or []
        key = (id(eps), len(eps))
        if key == self._key:
            return self._map
        tok, out = self.learner.tokenizer, {}
        task = self.learner.task
        for ep, t in zip(eps, trajs):
            ex = self._by_id.get(t.example_id)
            if ex is None:
                for split in ("train", "val", "test"):
                    try:
                        self._by_id.update({e.id: e for e in task.examples(split)})
                    except Exception:  # a task without that split
                        continue
                ex = self._by_id.get(t.example_id)
            if ex is not None:
                # the episode's own mask (tool observations 0), not TRL's env_mask, which also zeroes the
                # zero-variance groups RL drops: the distillation signal needs no reward variance
                out[(tuple(ep.prompt_ids), tuple(ep.completion_ids))] = (prompt_ids(tok, self.student, ex),
                                                                        list(ep.mask))
        self._key, self._map = key, out
        return out

    def __call__(self, model, inputs: dict):
        if self.coef == 0.0:
            return None
        import torch

        table = self._rows()
        pids, pmask = inputs["prompt_ids"], inputs["prompt_mask"]
        cids, cmask = inputs["completion_ids"], inputs["completion_mask"]
        total = None
        n_tok = 0
        kl_sum = 0.0
        for b in range(pids.shape[0]):
            prompt = pids[b][pmask[b].bool()].tolist()
            length = int(cmask[b].sum())
            comp = cids[b, :length].tolist()
            row = table.get((tuple(prompt), tuple(comp)))
            if row is None or not sum(row[1]):
                continue
            student, mask_list = row
            with torch.no_grad():
                t = completion_logits(model, prompt, comp)
            s = completion_logits(model, student, comp)
            mask = torch.tensor(mask_list, dtype=s.dtype, device=s.device)
            kl = (token_kl(s, t, self.support, self.top_k) * mask).sum()
            total = kl if total is None else total + kl
            n_tok += int(sum(mask_list))
            kl_sum += float(kl.detach())
        if total is None:
            return None
        self.last_kl = kl_sum / n_tok
        self.values.append(self.last_kl)
        return self.coef * total / n_tok
