"""The GEPA adapter over harnesses: evaluation by batched rollouts, the reflective dataset, and the two
proposal operators (``reflect`` through the reflection LM, ``bootstrap`` from the policy's own
successful trajectories). :func:`fst_lab.fast.fast_step` runs one GEPA round with it.

    >>> adapter = HarnessAdapter(policy, task, seed_harness, reflection_lm=ReflectionLM("openai/gpt-4.1-mini"))
    >>> gepa.optimize(seed_candidate=seed_harness.to_candidate(), adapter=adapter, ...)
    >>> [p.to_json() for p in adapter.proposals]     # every proposal: operator, status, detail, tokens, cost

A reflection reply is parsed by :func:`extract_proposal` (the last fenced block); a reply without a
usable block (a refusal, no fence, a fence cut off at the token limit) becomes an ``invalid``
proposal in the log and costs no rollouts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fst_lab.harness import Harness, HarnessError, few_shot_to_text
from fst_lab.rollout import Trajectory, rollout_pairs

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.models import Policy
    from fst_lab.tasks.base import Example, Task

log = logging.getLogger("fst_lab.fast")  # one logger for the fast loop (its messages predate the split)


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


def extract_proposal(reply: str, *, cut_off: bool | None = None) -> tuple[str | None, str]:
    """The new component text from a reflection reply: the last complete fenced block.

    GEPA's instruction-proposal prompt asks for the new text "within ``` blocks", and frontier models
    answer with prose (their diagnosis) followed by the block, sometimes with a language tag
    (```yaml) or after quoting the old text in an earlier block (hence the *last* block). Returns
    ``(text, "")``, or ``(None, why)`` for a reply that carries no usable proposal:

    - no fenced block (a refusal, or the new text without a fence: prose and text can't be told
      apart, and GEPA's own extractor would make the whole reply, refusal included, the new text);
    - an opening fence that is never closed: a reply cut off at the token limit (``cut_off=True``, the LM's
      finish reason was "length"; see ``fast.reflection_max_tokens``) or one that simply ended there
      (``cut_off=False``: a small model often answers a bare "```"); ``None`` when the caller can't tell;
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
            why = {True: "cut off at the token limit: the fenced block is never closed (fast.reflection_max_tokens)",
                   False: "the reply ended inside its fenced block (never closed)",
                   None: "the fenced block is never closed (cut off at the token limit?)"}[cut_off]
            return None, f"{why} (reply starts: {head!r})"
        return None, f"no fenced ``` block in the reply (reply starts: {head!r})"
    text = "\n".join(blocks[-1]).strip("\n")
    if not text.strip():
        return None, "the fenced block is empty"
    return text, ""


# Why a proposal is ``invalid``: a phrase of its detail (from :func:`extract_proposal`) and the reason recorded
# beside it (``ProposalRecord.reason``); a detail with none of these is a harness that failed to load.
INVALID_REASONS = (("cut off at the token limit:", "cut off at the token limit"),
                   ("ended inside its fenced block", "reply ended inside its fence"),
                   ("(cut off at the token limit?)", "unclosed fence (cause unknown)"),
                   ("no fenced", "no fenced block"), ("fenced block is empty", "empty block"))
BROKEN_HARNESS = "broken harness"


def invalid_reason(detail: str) -> str:
    """The reason an ``invalid`` proposal's ``detail`` states, one of :data:`INVALID_REASONS` or ``broken harness``."""
    return next((reason for phrase, reason in INVALID_REASONS if phrase in detail), BROKEN_HARNESS)


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
    reason: str = ""  # for an invalid proposal, why in a word or three (:func:`invalid_reason`)
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
            spent = None
            try:
                raw = self.reflection_lm(prompt)
            except Exception as e:  # ReflectionError and anything a custom callable raises
                self.reflection_failures += 1
                rec.status, rec.detail = "failed", f"{type(e).__name__}: {e}"
                log.warning("fast: reflection on %s failed: %s", comp, e)
                return {}, rec.detail
            finally:
                spent = self._charge(rec, stats0)
            if not isinstance(raw, str) or not raw.strip():
                self.reflection_failures += 1
                rec.status, rec.detail = "failed", "empty reply"
                return {}, rec.detail
            new, why = extract_proposal(raw, cut_off=None if spent is None else spent.length_stops > 0)
            if new is None:
                rec.status, rec.detail, rec.reason = "invalid", f"{comp}: {why}", invalid_reason(why)
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
            rec.status, rec.detail, rec.reason = "invalid", str(e), BROKEN_HARNESS
            log.info("fast: reflective proposal for %s is not a valid harness: %s", ",".join(new_texts), e)
            return {}, rec.detail
        return new_texts, "reflect: " + ",".join(new_texts)

    def _charge(self, rec: ProposalRecord, before):
        """Add the reflection LM's tokens and cost since ``before`` (a stats snapshot) to ``rec``; returns what
        was spent (a :class:`~fst_lab.lm.ReflectionStats`), or None for a callable that keeps no stats."""
        if before is None:
            return None
        try:
            spent = self.reflection_lm.stats.since(before)
            rec.reflection_tokens += int(spent.tokens)
            rec.reflection_cost += float(spent.cost)
        except Exception:  # a custom callable with a different stats object: nothing to charge
            return None
        return spent

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




def _emit(on_event, event: str, **kw) -> None:
    if on_event is not None:
        try:
            on_event({"kind": "fast", "event": event, **kw})
        except Exception:
            log.exception("fast: on_event callback failed")

