"""Fast weights: one GEPA round that turns a harness population into a new one.

FST's fast loop (arXiv 2605.12484, §3) keeps a *Pareto population* of K harnesses. Every T RL steps
it re-scores that population under the current weights, runs a light GEPA optimisation seeded with
the best member, and keeps the K harnesses that are best on some validation problem:

    >>> from fst_lab.fast import FastConfig, fast_step
    >>> res = fast_step(policy, task, [seed_harness], task.examples("train", 8), task.examples("val", 8),
    ...                 config=FastConfig(population_size=4), round=1)
    >>> res.population[0].system_prompt, res.val_scores[res.best_id], res.accepted

Two proposal operators compete under GEPA's own acceptance test and Pareto selection:

- ``reflect``: GEPA's default instruction-proposal prompt (``InstructionProposalSignature``), sent to
  the reflection LM (:class:`fst_lab.lm.ReflectionLM`, any LiteLLM model; offline default: the policy
  itself as ``fst-local/policy``). It reads full trajectories (tool calls, observations, errors) and
  the task's feedback, and rewrites one component (system prompt, task template, a tool description
  or the few-shot YAML).
- ``bootstrap``: few-shot demos built from the policy's *own* high-reward trajectories on training
  problems (DSPy's BootstrapFewShot idea). It needs no reflection LM at all, so the fast loop still
  improves when the reflector is as weak as a 135M model.

Each GEPA round is a fresh optimisation (scores from an earlier round were measured under older
weights), in its own run directory; GEPA's state there is pickled and is never read back by fst_lab.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fst_lab.config import CANDIDATE_SELECTIONS, FastConfig  # noqa: F401  (re-exported)
from fst_lab.harness import Harness, HarnessError, atomic_write_text, few_shot_to_text
from fst_lab.rollout import Trajectory, rollout_pairs

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.models import Policy
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger(__name__)

RESULT_FILE = "fst_fast_result.json"

# Extra rules appended to GEPA's default reflection prompt for components whose text has a format.
# GEPA's prompt itself is reused unchanged (InstructionProposalSignature.default_prompt_template).
_COMPONENT_RULES = {
    "task_template": ("\n\nThe new text is a Python str.format template: it must contain each of these "
                      "placeholders exactly once, spelled exactly so: {placeholders}. Write no other braces."),
    "few_shot": ("\n\nThe new text must be YAML: a list of conversations, each a list of messages with "
                 "'role' (user or assistant) and 'content' keys, in the same layout as the current one."),
}


# A fence line of GEPA's answer format: ``` or ~~~ (3 or more), at most 3 spaces in, optional info string.
# Fences indented further (inside a YAML block scalar, say) belong to the text, not to the answer.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})([^`]*)$")


def extract_proposal(reply: str) -> tuple[str | None, str]:
    """The new component text from a reflection reply: the last complete fenced block.

    GEPA's instruction-proposal prompt asks for the new text "within ``` blocks", and frontier models
    answer with prose (their diagnosis) followed by the block, sometimes with a language tag
    (```yaml) or after quoting the old text in an earlier block (hence the *last* block). Returns
    ``(text, "")``, or ``(None, why)`` for a reply that carries no usable proposal:

    - no fenced block (a refusal, or the new text without a fence: prose and text can't be told
      apart, and GEPA's own extractor would make the whole reply, refusal included, the new text);
    - an opening fence that is never closed (a reply cut off at the token limit);
    - an empty block.
    """
    lines = reply.splitlines()
    blocks: list[list[str]] = []
    fence: str | None = None
    body: list[str] = []
    for line in lines:
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, body = m.group(1), []
            continue
        # A closing fence: the same character, at least as long, and no info string.
        if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
            blocks.append(body)
            fence = None
            continue
        body.append(line)
    if not blocks:
        head = " ".join(reply.split())[:120]
        if fence is not None:
            return None, f"truncated reply: the fenced block is never closed (reply starts: {head!r})"
        return None, f"no fenced ``` block in the reply (reply starts: {head!r})"
    text = "\n".join(blocks[-1]).strip("\n")
    if not text.strip():
        return None, "the fenced block is empty"
    return text, ""


def candidate_key(candidate: Mapping[str, str]) -> str:
    """A stable key for a GEPA candidate dict."""
    return json.dumps(dict(candidate), sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------- the adapter
@dataclass
class ProposalRecord:
    """One proposal attempt: which operator, on what, and what became of it."""

    index: int
    operator: str  # "bootstrap" | "reflect"
    components: list[str]
    iteration: int | None = None
    status: str = "proposed"  # proposed -> accepted | rejected; or failed | invalid | noop | error
    detail: str = ""
    candidate_key: str = ""
    subsample_before: float | None = None
    subsample_after: float | None = None
    reflection_tokens: int = 0  # what the reflection call(s) of this proposal cost (reflect only)
    reflection_cost: float = 0.0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("candidate_key")
        return d


@dataclass
class _Seen:
    reward: float
    truncated: bool
    length: int
    ckey: str
    traj: Trajectory


class HarnessAdapter:
    """GEPA adapter over harnesses: candidate dict -> :class:`Harness` -> batched rollouts on the policy.

    Contract (GEPA's ``GEPAAdapter``, 0.1.4):
    - ``evaluate`` never raises for a bad candidate or a bad example: an invalid candidate (broken
      placeholders, few_shot that isn't YAML, ...) scores 0 everywhere and says why in the feedback;
      ``len(outputs) == len(scores) == len(batch)``; the candidate dict is never mutated.
    - Rollouts always use the policy object as it is *now* (the slow loop updates it in place).
    - ``propose_new_texts`` is a real method (never missing: a duck-typed adapter without it makes
      GEPA drop every proposal silently). It runs the bootstrap or the reflective operator and
      returns ``{}`` (GEPA then skips the proposal) when that operator can't produce a valid change.
    - A failing reflection call (:class:`fst_lab.lm.ReflectionError`) is caught *here*, counted and
      logged. Letting it escape would also be survivable: gepa 0.1.4's proposer catches it, logs it,
      but then calls ``propose_new_texts`` a second time for the same task before giving up, which
      would double every failed (possibly slow or paid) call.
    """

    def __init__(self, policy: "Policy", task: "Task", base_harness: Harness, *, temperature: float | None = None,
                 max_new_tokens: int | None = None, seed: int = 0, reflection_lm: Callable[[Any], str] | None = None,
                 bootstrap: bool = True, bootstrap_every: int = 2, max_demos: int = 2, demo_min_reward: float = 1.0,
                 demo_example_ids: Iterable[str] | None = None, max_transcript_chars: int = 3000,
                 batch_size: int = 16):
        self.policy, self.task, self.base_harness = policy, task, base_harness
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed
        self.reflection_lm = reflection_lm
        self.bootstrap_enabled = bootstrap and "few_shot" in base_harness.to_candidate()
        self.bootstrap_every, self.max_demos, self.demo_min_reward = bootstrap_every, max_demos, demo_min_reward
        self.demo_example_ids = None if demo_example_ids is None else set(demo_example_ids)
        self.max_transcript_chars, self.batch_size = max_transcript_chars, batch_size
        self._rng = random.Random(seed)
        self._harnesses: dict[str, Harness | HarnessError] = {}
        self._examples: dict[str, "Example"] = {}
        self._successes: dict[str, list[_Seen]] = defaultdict(list)  # example id -> demo candidates
        self._prescored: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
        self._last_minibatch: dict[str, list[str]] = {}  # candidate key -> ids of its last traced batch
        self._origin: dict[str, tuple[str, str]] = {}  # child candidate key -> (operator, note)
        self._eval_calls = 0
        self.iteration: int | None = None  # set by the GEPA callback in fast_step
        self.on_event: Callable[[dict], None] | None = None  # set by fast_step (UIs see invalid proposals)
        # counters
        self.rollouts = 0
        self.reflection_calls = 0
        self.reflection_failures = 0
        self.eval_errors = 0
        self.proposals: list[ProposalRecord] = []

    # ------------------------------------------------------------------ candidates
    def harness_for(self, candidate: Mapping[str, str]) -> Harness:
        """The harness a candidate stands for (cached; raises :class:`HarnessError` if invalid)."""
        key = candidate_key(candidate)
        h = self._harnesses.get(key)
        if h is None:
            try:
                unknown = [k for k in candidate if k not in self.base_harness.components()]
                if unknown:
                    raise HarnessError(f"unknown component(s) {unknown}", path=unknown[0])
                h = self.base_harness.from_candidate(dict(candidate), origin="gepa")
            except HarnessError as e:
                h = e
            except Exception as e:  # anything else a malformed text can trigger is still the candidate's fault
                h = HarnessError(f"{type(e).__name__}: {e}")
            self._harnesses[key] = h
        if isinstance(h, HarnessError):
            raise h
        return h

    def origin_of(self, candidate: Mapping[str, str]) -> tuple[str, str] | None:
        """(operator, note) of a candidate this adapter proposed, else None."""
        return self._origin.get(candidate_key(candidate))

    def prime(self, candidate: Mapping[str, str], trajectories: Sequence[Trajectory]) -> None:
        """Hand over rollouts already made for ``candidate`` (e.g. the re-scoring of the seed on the
        validation set): the next evaluation of the same (candidate, example) reuses each one once,
        so GEPA's seed evaluation costs no new rollouts and agrees exactly with the re-scoring."""
        key = candidate_key(candidate)
        for t in trajectories:
            self._prescored[(key, t.example_id)].append(t)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, batch: list["Example"], candidate: dict[str, str], capture_traces: bool = False):
        out = self.batch_evaluate([(candidate, batch)])[0]
        if not capture_traces:
            out.trajectories = None
        return out

    def batch_evaluate(self, items: list[tuple[dict[str, str], list["Example"]]]):
        """Evaluate several (candidate, batch) pairs in one batched rollout (GEPA's optional hook)."""
        from gepa.core.adapter import EvaluationBatch

        results: list[list[Trajectory | None]] = []
        pairs: list[tuple[Harness, "Example"]] = []
        slots: list[tuple[int, int]] = []
        errors: dict[int, str] = {}
        for i, (candidate, batch) in enumerate(items):
            key = candidate_key(candidate)
            results.append([None] * len(batch))
            try:
                h = self.harness_for(candidate)
            except HarnessError as e:
                errors[i] = str(e)
                continue
            for j, ex in enumerate(batch):
                self._examples[ex.id] = ex
                cached = self._prescored.get((key, ex.id))
                if cached:
                    results[i][j] = cached.pop(0)
                    continue
                pairs.append((h, ex))
                slots.append((i, j))
        if pairs:
            seed = self.seed + 7919 * self._eval_calls
            self._eval_calls += 1
            try:
                trajs = rollout_pairs(self.policy, pairs, self.task, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, seed=seed, batch_size=self.batch_size)
                self.rollouts += len(trajs)
            except Exception as e:  # systemic (model) failure: score 0, say why, keep GEPA going
                log.exception("rollout failed while evaluating %d pairs", len(pairs))
                self.eval_errors += 1
                trajs = [_error_trajectory(ex, h.id, f"rollout failed: {type(e).__name__}: {e}") for h, ex in pairs]
            for (i, j), t in zip(slots, trajs):
                results[i][j] = t
        out = []
        for i, (candidate, batch) in enumerate(items):
            if i in errors:
                trajs_i = [_error_trajectory(ex, "invalid", f"The harness is invalid and was not run: {errors[i]}")
                           for ex in batch]
            else:
                trajs_i = [t for t in results[i]]
                self._remember(candidate_key(candidate), trajs_i)
            out.append(EvaluationBatch(
                outputs=[{"example_id": t.example_id, "final_text": t.final_text, "reward": t.reward} for t in trajs_i],
                scores=[float(t.reward) for t in trajs_i], trajectories=trajs_i))
        return out

    def _remember(self, key: str, trajs: Sequence[Trajectory]) -> None:
        for t in trajs:
            if t.error or t.reward < self.demo_min_reward:
                continue
            if self.demo_example_ids is not None and t.example_id not in self.demo_example_ids:
                continue  # only training problems may become demos (a validation demo leaks its answer)
            seen = self._successes[t.example_id]
            if not any(s.traj is t for s in seen):
                seen.append(_Seen(t.reward, t.truncated, len(t.transcript(100_000)), key, t))

    # ------------------------------------------------------------------ reflective dataset
    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch, components_to_update: list[str]):
        """{component: [{"Inputs", "Generated Outputs", "Feedback"}]}: what the reflection LM reads."""
        trajs = eval_batch.trajectories or []
        self._last_minibatch[candidate_key(candidate)] = [t.example_id for t in trajs]
        try:
            h = self.harness_for(candidate)
        except HarnessError:
            h = None
        records = [self._record(h, t) for t in trajs]
        return {comp: [dict(r) for r in records] for comp in components_to_update}

    def _record(self, h: Harness | None, t: Trajectory) -> dict:
        ex = self._examples.get(t.example_id)
        if ex is None:
            inputs = t.example_id
        elif h is not None:
            try:
                inputs = h.render_user(ex.inputs)
            except HarnessError:
                inputs = "\n".join(f"{k}: {v}" for k, v in ex.inputs.items())
        else:
            inputs = "\n".join(f"{k}: {v}" for k, v in ex.inputs.items())
        generated = t.transcript(self.max_transcript_chars) or "(no output)"
        if t.error and len(t.messages) <= t.n_prompt_messages:
            generated = f"(not run: {t.error})"
        notes = []
        if t.truncated:
            notes.append("the last turn hit the token limit")
        feedback = (t.feedback or "").strip()
        feedback += f" (reward {t.reward:.2f}" + (f"; {'; '.join(notes)}" if notes else "") + ")"
        return {"Inputs": inputs, "Generated Outputs": generated, "Feedback": feedback.strip()}

    # ------------------------------------------------------------------ proposals
    def propose_new_texts(self, candidate: dict[str, str],
                          reflective_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
                          components_to_update: list[str]) -> dict[str, str]:
        """GEPA's proposal hook: bootstrap or reflect (see :class:`FastConfig` ``bootstrap_every``)."""
        k = len(self.proposals)
        if self.bootstrap_enabled and self._is_bootstrap_turn(k, components_to_update):
            rec = ProposalRecord(k, "bootstrap", ["few_shot"], iteration=self.iteration)
            self.proposals.append(rec)
            try:
                texts, note = self._bootstrap(candidate)
            except Exception as e:  # a bug here must not end the round; it is logged and counted
                log.exception("bootstrap proposal failed")
                rec.status, rec.detail = "error", f"{type(e).__name__}: {e}"
                return {}
            if texts:
                return self._proposed(rec, candidate, texts, note)
            rec.status, rec.detail = "noop", note
            log.info("fast: bootstrap found no usable demo (%s); reflecting instead", note)
            k = len(self.proposals)
        rec = ProposalRecord(k, "reflect", list(components_to_update), iteration=self.iteration)
        self.proposals.append(rec)
        try:
            texts, note = self._reflect(candidate, reflective_dataset, components_to_update, rec)
        except Exception as e:
            log.exception("reflective proposal failed")
            rec.status, rec.detail = "error", f"{type(e).__name__}: {e}"
            texts = {}
        if not texts:
            _emit(self.on_event, "proposal_" + rec.status, index=rec.index, operator=rec.operator,
                  components=rec.components, detail=rec.detail, iteration=rec.iteration)
            return {}
        return self._proposed(rec, candidate, texts, note)

    def _is_bootstrap_turn(self, k: int, components: list[str]) -> bool:
        if self.bootstrap_every <= 0:
            return "few_shot" in components
        return k % self.bootstrap_every == 0

    def _proposed(self, rec: ProposalRecord, candidate: dict, texts: dict[str, str], note: str) -> dict[str, str]:
        child = {**candidate, **texts}
        rec.candidate_key = candidate_key(child)
        rec.detail = note
        self._origin.setdefault(rec.candidate_key, (rec.operator, note))  # lineage origin: bootstrap | reflect
        log.info("fast: %s proposal #%d on %s: %s", rec.operator, rec.index, ",".join(texts), note)
        return texts

    def _reflect(self, candidate: dict[str, str], reflective_dataset, components: list[str],
                 rec: ProposalRecord) -> tuple[dict[str, str], str]:
        from gepa.strategies.instruction_proposal import InstructionProposalSignature as Sig

        if self.reflection_lm is None:
            rec.status, rec.detail = "failed", "no reflection LM configured"
            return {}, rec.detail
        new_texts: dict[str, str] = {}
        for comp in components:
            records = reflective_dataset.get(comp)
            if not records:
                continue
            template = Sig.default_prompt_template + self._rules(comp)
            prompt = Sig.prompt_renderer({"current_instruction_doc": candidate[comp],
                                          "dataset_with_feedback": list(records), "prompt_template": template})
            self.reflection_calls += 1
            stats0 = getattr(self.reflection_lm, "stats", None)
            try:
                raw = self.reflection_lm(prompt)
            except Exception as e:  # ReflectionError and anything a custom callable raises
                self.reflection_failures += 1
                rec.status, rec.detail = "failed", f"{type(e).__name__}: {e}"
                log.warning("fast: reflection on %s failed: %s", comp, e)
                return {}, rec.detail
            finally:
                self._charge(rec, stats0)
            if not isinstance(raw, str) or not raw.strip():
                self.reflection_failures += 1
                rec.status, rec.detail = "failed", "empty reply"
                return {}, rec.detail
            new, why = extract_proposal(raw)
            if new is None:
                rec.status, rec.detail = "invalid", f"{comp}: {why}"
                log.info("fast: reflective proposal for %s rejected: %s", comp, why)
                return {}, rec.detail
            # Keep the current text's trailing-newline style (YAML block scalars stay tidy).
            new = new.strip("\n") + ("\n" if candidate[comp].endswith("\n") else "")
            if new == candidate[comp]:
                continue
            new_texts[comp] = new
        if not new_texts:
            rec.status, rec.detail = "noop", "the reflection LM proposed no change"
            return {}, rec.detail
        try:
            self.harness_for({**candidate, **new_texts})
        except HarnessError as e:
            # Rejected before any rollout: a broken harness would only burn minibatch budget on zeros.
            rec.status, rec.detail = "invalid", str(e)
            log.info("fast: reflective proposal for %s is not a valid harness: %s", ",".join(new_texts), e)
            return {}, rec.detail
        return new_texts, "reflect: " + ",".join(new_texts)

    def _charge(self, rec: ProposalRecord, before) -> None:
        """Add the reflection LM's tokens and cost since ``before`` (a stats snapshot) to ``rec``."""
        if before is None:
            return
        try:
            spent = self.reflection_lm.stats.since(before)
        except Exception:  # a custom callable with a different stats object: nothing to charge
            return
        rec.reflection_tokens += int(spent.tokens)
        rec.reflection_cost += float(spent.cost)

    def _rules(self, comp: str) -> str:
        if comp == "task_template":
            names = ", ".join("{" + i + "}" for i in self.base_harness.inputs)
            return _COMPONENT_RULES[comp].format(placeholders=names)
        return _COMPONENT_RULES.get(comp, "")

    def _bootstrap(self, candidate: dict[str, str]) -> tuple[dict[str, str] | None, str]:
        """New few_shot text from the best successful training trajectories seen so far."""
        h = self.harness_for(candidate)
        minibatch = set(self._last_minibatch.get(candidate_key(candidate), []))
        current_users = {m.get("content") for conv in h.few_shot for m in conv[:1]}
        best: list[tuple[tuple, "Example", _Seen]] = []
        for ex_id, seen in self._successes.items():
            ex = self._examples.get(ex_id)
            if ex is None or not seen:
                continue
            try:
                user = h.render_user(ex.inputs)
            except HarnessError:
                continue
            if user in current_users:
                continue
            s = min(seen, key=lambda s: (-s.reward, s.truncated, s.length))
            # Prefer problems outside the current minibatch: a demo of a minibatch problem would sit
            # in the child's prompt during its own acceptance test (only ever protecting a problem the
            # parent already solved, but still). Then higher reward, not truncated, shorter.
            best.append(((ex_id in minibatch, -s.reward, s.truncated, self._rng.random()), ex, s))
        if not best:
            return None, "no successful training trajectory yet"
        best.sort(key=lambda b: b[0])
        demos = [self._demo(h, ex, s.traj) for _, ex, s in best[: self.max_demos]]
        keep = [list(c) for c in h.few_shot][: max(0, self.max_demos - len(demos))]
        text = few_shot_to_text(demos + keep)
        if text == candidate.get("few_shot"):
            return None, "the demos are already in the parent"
        try:
            self.harness_for({**candidate, "few_shot": text})
        except HarnessError as e:
            return None, f"bootstrapped few_shot is invalid: {e}"
        ids = [ex.id for _, ex, _ in best[: self.max_demos]]
        return {"few_shot": text}, f"bootstrap: {len(demos)} demo(s) from {ids}"

    @staticmethod
    def _demo(h: Harness, ex: "Example", traj: Trajectory) -> list[dict]:
        """One demo conversation: the rendered problem, then the trajectory's turns (tool calls as text)."""
        conv = [{"role": "user", "content": h.render_user(ex.inputs)}]
        for m in traj.messages[traj.n_prompt_messages:]:
            if m["role"] == "assistant":
                conv.append({"role": "assistant", "content": m.get("content") or ""})
            elif m["role"] == "tool":
                msg = {"role": "tool", "content": str(m.get("content", ""))}
                if m.get("name"):
                    msg["name"] = str(m["name"])
                conv.append(msg)
        return conv


def _error_trajectory(ex: "Example", harness_id: str, error: str) -> Trajectory:
    return Trajectory(example_id=ex.id, harness_id=harness_id, sample=0, messages=[], n_prompt_messages=0,
                      reward=0.0, feedback=error, error=error)


# ---------------------------------------------------------------------------- GEPA glue
class _Tracker:
    """GEPA callback: counts proposals/acceptances and forwards events to ``on_event``."""

    def __init__(self, adapter: HarnessAdapter, on_event: Callable[[dict], None] | None):
        self.adapter, self.on_event = adapter, on_event
        self.accepted = self.rejected = self.errors = 0
        self.error_messages: list[str] = []
        self._parent_sum: float | None = None

    def _emit(self, event: str, **kw) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"kind": "fast", "event": event, **kw})
            except Exception:  # a UI callback must never end the round
                log.exception("fast: on_event callback failed")

    def _last(self) -> ProposalRecord | None:
        for rec in reversed(self.adapter.proposals):
            if rec.status == "proposed":
                return rec
        return None

    def on_iteration_start(self, e):
        self.adapter.iteration = e["iteration"]
        self._parent_sum = None

    def on_evaluation_end(self, e):
        if e.get("candidate_idx") is not None and e.get("has_trajectories"):
            self._parent_sum = float(sum(e["scores"]))  # the parent's minibatch, before reflection

    def on_candidate_accepted(self, e):
        self.accepted += 1
        rec = self._last()
        if rec is not None:
            rec.status = "accepted"
            rec.subsample_before, rec.subsample_after = self._parent_sum, e.get("new_score")
        self._emit("accepted", iteration=e["iteration"], candidate=e["new_candidate_idx"],
                   operator=rec.operator if rec else None, subsample_score=e.get("new_score"))

    def on_candidate_rejected(self, e):
        self.rejected += 1
        rec = self._last()
        if rec is not None:
            rec.status = "rejected"
            rec.subsample_before, rec.subsample_after = e.get("old_score"), e.get("new_score")
        self._emit("rejected", iteration=e["iteration"], operator=rec.operator if rec else None,
                   old=e.get("old_score"), new=e.get("new_score"))

    def on_error(self, e):
        self.errors += 1
        self.error_messages.append(f"{type(e['exception']).__name__}: {e['exception']}")
        log.error("fast: GEPA iteration %s raised %s", e.get("iteration"), self.error_messages[-1])

    def on_budget_updated(self, e):
        self._emit("budget", used=e["metric_calls_used"], remaining=e.get("metric_calls_remaining"))


class _GEPALog:
    """GEPA's LoggerProtocol -> Python logging (and run_log.txt in the round's directory)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, path: Path | None):
        self.logger, self.path = logger, path

    def log(self, message: str) -> None:
        self.logger.debug("gepa: %s", message)
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(message.rstrip("\n") + "\n")
            except OSError:
                pass


# ---------------------------------------------------------------------------- population selection
def pareto_layers(scores: Mapping[str, Sequence[float]]) -> dict[str, int]:
    """Non-domination rank of each candidate over per-instance scores (0 = Pareto front)."""
    ids = list(scores)
    remaining, rank, layer = set(ids), {}, 0
    while remaining:
        front = {a for a in remaining if not any(_dominates(scores[b], scores[a]) for b in remaining if b != a)}
        for a in front:
            rank[a] = layer
        remaining -= front
        layer += 1
    return rank


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def select_population(scores: Mapping[str, Sequence[float]], k: int, *, prefer: Sequence[str] = ()) -> list[str]:
    """K ids from per-validation-instance scores, best-first by mean score.

    Pareto layers are filled in order (the front first). Within a layer, members are picked greedily
    by how many *not yet covered* validation instances they are best on (GEPA's per-instance front:
    a specialist that alone solves a problem beats a second copy of the generalist), then by mean
    score, then by ``prefer`` order (incumbents first: a newcomer must beat a member to displace it),
    then insertion order. Instances on which every candidate scores the same count for nobody.
    """
    ids = list(scores)
    if not ids or k < 1:
        return []
    n = min(len(v) for v in scores.values())
    best = [max(scores[c][i] for c in ids) for i in range(n)]
    informative = [i for i in range(n) if any(scores[c][i] < best[i] for c in ids)]
    rank = pareto_layers(scores)
    agg = {c: _mean(scores[c]) for c in ids}
    pref = {cid: i for i, cid in enumerate(prefer)}
    pool = sorted(ids, key=lambda c: (rank[c], -agg[c], pref.get(c, len(pref)), ids.index(c)))
    chosen: list[str] = []
    covered: set[int] = set()
    while len(chosen) < min(k, len(ids)):
        rest = [c for c in pool if c not in chosen]
        layer = [c for c in rest if rank[c] == rank[rest[0]]]
        wins = {c: {i for i in informative if i not in covered and scores[c][i] >= best[i]} for c in layer}
        pick = max(layer, key=lambda c: (len(wins[c]), -pool.index(c)))
        chosen.append(pick)
        covered |= wins[pick]
    return sorted(chosen, key=lambda c: (-agg[c], pool.index(c)))


# ---------------------------------------------------------------------------- the fast step
@dataclass
class FastResult:
    """What one fast step produced. ``population`` is best-first by validation score."""

    population: list[Harness]
    val_scores: dict[str, float]  # harness id -> mean validation reward (every candidate of the round)
    per_instance: dict[str, list[float]]  # harness id -> reward per validation example (val order)
    prev_scores: dict[str, float]  # previous members re-scored under the current weights
    metric_calls: int  # GEPA's rollout budget used (minibatches + validation runs)
    proposals: int  # proposals GEPA evaluated (accepted + rejected)
    accepted: int
    rejected: int
    bootstrap_proposals: int
    reflection_calls: int
    reflection_failures: int
    reflection_tokens: int
    reflection_cost: float
    seconds: float
    best_id: str
    round: int = 0
    seed_id: str = ""
    candidates: list[Harness] = field(default_factory=list)  # GEPA's candidates as harnesses (seed first)
    invalid_proposals: int = 0  # reflections that were no valid harness, no change, or empty
    rescore_rollouts: int = 0  # rollouts spent re-scoring the previous population
    rollouts: int = 0  # all policy rollouts of the step (re-scoring + GEPA)
    errors: list[str] = field(default_factory=list)  # exceptions GEPA caught and logged
    proposal_log: list[dict] = field(default_factory=list)
    reflection: dict = field(default_factory=dict)  # ReflectionStats of this step (when available)
    gepa_run_dir: str | None = None

    @property
    def best(self) -> Harness:
        return next(h for h in self.population if h.id == self.best_id)

    def summary(self) -> dict:
        """One compact metrics record (no harness texts, no per-proposal log)."""
        d = self.to_json()
        for k in ("harnesses", "proposal_log", "per_instance", "candidates"):
            d.pop(k, None)
        d["population"] = [h.id for h in self.population]
        d["best_val"] = self.val_scores.get(self.best_id)
        d["seed_val"] = self.prev_scores.get(self.seed_id)
        return d

    def to_json(self) -> dict:
        """Everything, JSON-ready (written to ``fst_fast_result.json`` in the round's directory)."""
        by_id = {h.id: h for h in [*self.population, *self.candidates]}
        return {
            "round": self.round, "seed_id": self.seed_id, "best_id": self.best_id,
            "population": [{"id": h.id, "name": h.name, "origin": h.lineage.origin,
                            "parents": list(h.lineage.parents), "round": h.lineage.round, "note": h.lineage.note,
                            "val_score": self.val_scores.get(h.id)} for h in self.population],
            "val_scores": self.val_scores, "per_instance": self.per_instance, "prev_scores": self.prev_scores,
            "metric_calls": self.metric_calls, "proposals": self.proposals, "accepted": self.accepted,
            "rejected": self.rejected, "bootstrap_proposals": self.bootstrap_proposals,
            "invalid_proposals": self.invalid_proposals, "reflection_calls": self.reflection_calls,
            "reflection_failures": self.reflection_failures, "reflection_tokens": self.reflection_tokens,
            "reflection_cost": self.reflection_cost, "reflection": self.reflection,
            "rescore_rollouts": self.rescore_rollouts, "rollouts": self.rollouts, "seconds": self.seconds,
            "errors": self.errors, "proposal_log": self.proposal_log, "gepa_run_dir": self.gepa_run_dir,
            "candidates": [h.id for h in self.candidates],
            "harnesses": {hid: h.to_dict() for hid, h in by_id.items()},
        }


def fast_step(policy: "Policy", task: "Task", population: Sequence[Harness], train_examples: Sequence["Example"],
              val_examples: Sequence["Example"], *, config: FastConfig | None = None, round: int = 0,
              reflection_lm: Callable[[Any], str] | None = None, run_dir: str | Path | None = None,
              progress: bool = True, logger: logging.Logger | logging.LoggerAdapter | None = None,
              on_event: Callable[[dict], None] | None = None) -> FastResult:
    """One GEPA round: re-score ``population`` now, evolve from its best member, keep K by Pareto.

    Args:
        population: the current harnesses (at least one); they are never modified.
        train_examples: GEPA's reflection minibatches and the only source of bootstrapped demos.
        val_examples: the Pareto set: every kept candidate is scored on all of them (empty: train).
        reflection_lm: a callable ``(prompt) -> str`` (e.g. :class:`fst_lab.lm.ReflectionLM`);
            default: built from ``config`` (for ``fst-local/...`` the policy is registered first).
        run_dir: GEPA's directory for this round (e.g. ``RUN/fast/round_0003``). A leftover GEPA
            state there is moved aside (``<dir>.stale-N``): resuming it would reuse scores from
            other weights. ``fst_fast_result.json`` is written there at the end.
        on_event: called with small dicts (``{"kind": "fast", "event": "accepted", ...}``) for UIs.

    Returns a :class:`FastResult`; new GEPA harnesses carry lineage (parents = the harness ids of
    their GEPA parents, origin ``gepa`` or ``bootstrap``, ``round``), earlier members keep theirs.
    """
    import gepa

    config = config or FastConfig()
    lg = logger or log
    t0 = time.time()
    members = _dedupe(population)
    if not members:
        raise ValueError("fast_step needs a non-empty population")
    train, val = list(train_examples), list(val_examples) or list(train_examples)
    if not train:
        raise ValueError("fast_step needs training examples")
    rlm = reflection_lm if reflection_lm is not None else _default_reflection_lm(policy, config)
    stats0 = getattr(rlm, "stats", None)

    # (a) Re-score every member under the *current* weights: earlier scores are stale after RL.
    pairs = [(h, ex) for h in members for ex in val]
    trajs = rollout_pairs(policy, pairs, task, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                          seed=config.seed + 100_003 * round)
    per_instance: dict[str, list[float]] = {}
    member_trajs: dict[str, list[Trajectory]] = {}
    for i, h in enumerate(members):
        chunk = trajs[i * len(val):(i + 1) * len(val)]
        member_trajs[h.id] = chunk
        per_instance[h.id] = [float(t.reward) for t in chunk]
    prev_scores = {hid: _mean(v) for hid, v in per_instance.items()}
    seed_h = max(members, key=lambda h: prev_scores[h.id])  # first of the best (members are best-first)
    lg.info("fast round %d: re-scored %d member(s) on %d val examples: %s; seed %s", round, len(members), len(val),
            {k: _r3(v) for k, v in prev_scores.items()}, seed_h.id)
    _emit(on_event, "rescored", round=round, scores=dict(prev_scores), seed=seed_h.id)

    # (b) A fresh GEPA optimisation seeded with the best member.
    adapter = HarnessAdapter(policy, task, seed_h, temperature=config.temperature,
                             max_new_tokens=config.max_new_tokens, seed=config.seed + 1000 * round,
                             reflection_lm=rlm, bootstrap=config.bootstrap, bootstrap_every=config.bootstrap_every,
                             max_demos=config.max_demos, demo_min_reward=config.demo_min_reward,
                             demo_example_ids=[ex.id for ex in train])
    seed_cand = seed_h.to_candidate()
    adapter.prime(seed_cand, member_trajs[seed_h.id])
    tracker = _Tracker(adapter, on_event)
    adapter.on_event = on_event
    gepa_dir = _fresh_dir(run_dir, lg) if run_dir is not None else None
    budget = config.budget(len(train), len(val))
    lg.info("fast round %d: GEPA with %d train / %d val examples, budget %d rollouts, reflection %s", round,
            len(train), len(val), budget, getattr(rlm, "model", type(rlm).__name__))
    result = gepa.optimize(
        seed_candidate=seed_cand, trainset=train, valset=val, adapter=adapter,
        reflection_lm=rlm if config.max_reflection_cost is not None else None,
        max_reflection_cost=config.max_reflection_cost,
        candidate_selection_strategy=config.candidate_selection,
        reflection_minibatch_size=config.reflection_minibatch_size,
        max_metric_calls=budget, use_merge=config.use_merge, run_dir=str(gepa_dir) if gepa_dir else None,
        callbacks=[tracker], logger=_GEPALog(lg, gepa_dir / "run_log.txt" if gepa_dir else None),
        display_progress_bar=progress, seed=config.seed + round, raise_on_exception=False,
        track_best_outputs=False)

    # (c) GEPA's candidates as harnesses with lineage, then K by Pareto over the union.
    by_content = {h.content_id(): h for h in members}
    cand_harnesses: list[Harness] = []
    for i, cand in enumerate(result.candidates):
        if i == 0:
            cand_harnesses.append(seed_h)
            continue
        parents = [cand_harnesses[p].id for p in result.parents[i] if p is not None and p < len(cand_harnesses)]
        origin, note = adapter.origin_of(cand) or ("merge" if len(parents) > 1 else "gepa", "")
        changed = {k: v for k, v in cand.items() if seed_h.component(k) != v}
        h = seed_h.with_components(changed, origin=origin, round=round, parents=parents or [seed_h.id], note=note)
        h = by_content.get(h.content_id(), h)  # identical to an existing member: keep the member's lineage
        by_content.setdefault(h.content_id(), h)
        cand_harnesses.append(h)
        scores = result.val_subscores[i]
        per_instance.setdefault(h.id, [float(scores.get(j, 0.0)) for j in range(len(val))])
    union = {h.id: h for h in [*members, *cand_harnesses]}
    chosen = select_population(per_instance, config.population_size, prefer=[h.id for h in members])
    new_pop = [union[cid] for cid in chosen]
    val_scores = {hid: _mean(v) for hid, v in per_instance.items()}

    props = [p for p in adapter.proposals if p.status in ("accepted", "rejected")]
    rstats = rlm.stats.since(stats0) if stats0 is not None and hasattr(rlm, "stats") else None
    res = FastResult(
        population=new_pop, val_scores=val_scores, per_instance=per_instance, prev_scores=prev_scores,
        metric_calls=int(result.total_metric_calls or 0), proposals=len(props), accepted=tracker.accepted,
        rejected=tracker.rejected, bootstrap_proposals=sum(p.operator == "bootstrap" for p in props),
        reflection_calls=rstats.calls if rstats else adapter.reflection_calls,
        reflection_failures=rstats.failures if rstats else adapter.reflection_failures,
        reflection_tokens=rstats.tokens if rstats else 0, reflection_cost=rstats.cost if rstats else 0.0,
        seconds=time.time() - t0, best_id=new_pop[0].id, round=round, seed_id=seed_h.id,
        candidates=cand_harnesses,
        invalid_proposals=sum(p.status in ("invalid", "noop") and p.operator == "reflect" for p in adapter.proposals),
        rescore_rollouts=len(trajs), rollouts=len(trajs) + adapter.rollouts, errors=list(tracker.error_messages),
        proposal_log=[p.to_json() for p in adapter.proposals], reflection=rstats.to_json() if rstats else {},
        gepa_run_dir=str(gepa_dir) if gepa_dir else None)
    lg.info("fast round %d: %d proposal(s) (%d bootstrap), %d accepted, %d rejected; reflection %d call(s), "
            "%d failed; best %s %.3f (seed %.3f) in %.1fs", round, res.proposals, res.bootstrap_proposals,
            res.accepted, res.rejected, res.reflection_calls, res.reflection_failures, res.best_id,
            val_scores[res.best_id], prev_scores[seed_h.id], res.seconds)
    if tracker.errors:
        lg.warning("fast round %d: GEPA caught %d exception(s): %s", round, tracker.errors, tracker.error_messages[:3])
    if gepa_dir is not None:
        atomic_write_text(gepa_dir / RESULT_FILE, json.dumps(res.to_json(), indent=2, default=str) + "\n")
    _emit(on_event, "done", round=round, best=res.best_id, accepted=res.accepted, proposals=res.proposals)
    return res


def add_manual(population: Sequence[Harness], harness: Harness, *, parent: Harness | str | None = None,
               round: int, max_size: int | None = None, note: str = "") -> list[Harness]:
    """A new population with a hand-edited harness (origin ``manual``) in it.

    The size stays the same by default (the slow loop needs K to divide G): the manual harness
    replaces the *last* non-manual member, i.e. the worst by the last validation, since
    :func:`fast_step` returns populations best-first. Pass ``max_size`` to allow growth (e.g.
    ``len(population) + 1``; the next fast step trims back to K). A harness whose content is already
    in the population changes nothing. ``population`` itself is never modified.
    """
    members = list(population)
    parent_id = parent.id if isinstance(parent, Harness) else parent
    edited = harness.replace(lineage=dataclasses.replace(
        harness.lineage, origin="manual", round=round, parents=(parent_id,) if parent_id else (),
        note=note or harness.lineage.note))
    if any(m.content_id() == edited.content_id() for m in members):
        log.info("add_manual: harness %s is already in the population", edited.id)
        return members
    limit = len(members) if max_size is None else max_size
    if limit < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    while len(members) >= limit and members:
        victims = [i for i, m in enumerate(members) if m.lineage.origin != "manual"] or list(range(len(members)))
        dropped = members.pop(victims[-1])
        log.info("add_manual: %s replaces %s (%s)", edited.id, dropped.id, dropped.lineage.origin)
    return [*members, edited]


# ---------------------------------------------------------------------------- helpers
def _default_reflection_lm(policy: "Policy", config: FastConfig):
    import os

    from fst_lab.lm import LOCAL_PROVIDER, ReflectionLM, register_local_policy

    if config.reflection_lm.startswith(LOCAL_PROVIDER + "/"):
        register_local_policy(policy, config.reflection_lm.split("/", 1)[1])
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.api_key_env and key is None:
        raise ValueError(f"api_key_env={config.api_key_env!r} is not set in the environment")
    return ReflectionLM(config.reflection_lm, api_base=config.api_base, api_key=key,
                        num_retries=config.reflection_retries, timeout=config.reflection_timeout,
                        temperature=config.reflection_temperature, max_tokens=config.reflection_max_tokens)


def _fresh_dir(run_dir: str | Path, lg) -> Path:
    d = Path(run_dir)
    if d.exists() and any(d.iterdir()):
        n = 1
        while Path(f"{d}.stale-{n}").exists():
            n += 1
        stale = Path(f"{d}.stale-{n}")
        d.rename(stale)
        lg.warning("fast: %s held an earlier GEPA run (scores from other weights); moved it to %s", d, stale)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _dedupe(population: Sequence[Harness]) -> list[Harness]:
    seen, out = set(), []
    for h in population:
        if h.id not in seen:
            seen.add(h.id)
            out.append(h)
    return out


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v)) if v else 0.0


def _r3(x: float) -> float:
    return float(f"{x:.3f}")


def _emit(on_event, event: str, **kw) -> None:
    if on_event is not None:
        try:
            on_event({"kind": "fast", "event": event, **kw})
        except Exception:
            log.exception("fast: on_event callback failed")
