"""Evaluation: mean@k of harnesses under some weights, and the plasticity probe.

The session calls these with its policy, task and population and records the result
(:meth:`fst_lab.session.Session.evaluate`, ``channel_ablation``, ``plasticity_probe``); they write
nothing themselves.

    >>> result, trajs = mean_at_k(policy, [("best", h)], task.examples("val", 16), task, k=1,
    ...                           max_new_tokens=256, seed=0)
    >>> result["reward"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from fst_lab.harness import Harness

# The paper's 2x2: {base, trained weights} x {seed, evolved harness}. Keys of channel_ablation().
ABLATION_CELLS = (("base", "seed"), ("base", "best"), ("trained", "seed"), ("trained", "best"))
# What answer_stats() adds to a single-target evaluation (and so to its eval record).
ANSWER_KEYS = ("answer_top", "answer_top_share", "answer_unparsed", "constant_floor")


def ablation_key(weights: str, harness: str) -> str:
    return f"{weights}_weights+{'seed' if harness == 'seed' else 'evolved'}_harness"


def bare_harness(task: str = "") -> Harness:
    """No system prompt, no few-shot, no tools: the question alone (OOD-style / no-harness eval)."""
    return Harness.from_dict({"schema_version": 1, "name": "no-harness", "task": task, "inputs": ["question"],
                              "system_prompt": "", "task_template": "{question}", "few_shot": [], "tools": [],
                              "evolvable": ["system_prompt"]})


def targets(harness: str | Harness, *, best: Callable[[], Harness], seed: Harness, population: Sequence[Harness],
            task: str) -> list[tuple[str, Harness]]:
    """``(label, harness)`` pairs for ``evaluate(harness=...)``: best | seed | none | population | a Harness."""
    if isinstance(harness, Harness):
        return [("custom", harness)]
    if harness == "best":
        return [("best", best())]
    if harness == "seed":
        return [("seed", seed)]
    if harness == "none":
        return [("none", bare_harness(task))]
    if harness == "population":
        return [(h.id, h) for h in population]
    raise ValueError(f"harness must be best | seed | none | population | a Harness, got {harness!r}")


def mean_at_k(policy, targets: Sequence[tuple[str, Harness]], examples, task, *, k: int, max_new_tokens: int,
              seed: int, temperature: float | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list]:
    """Mean reward of each ``(label, harness)`` over ``k`` samples per example.

    Returns ``({"reward" or "reward_<label>": mean, "harness_ids": {label: id}, ...}, trajectories)``:
    a single target labelled ``best`` reports ``reward``; several report ``reward_<label>`` each and
    ``reward`` = the highest. ``temperature`` defaults to the harness's own when k > 1, else greedy.
    """
    from fst_lab.rollout import rollout

    result: dict[str, Any] = {}
    trajs_all: list = []
    temps = set()
    for i, (label, h) in enumerate(targets):
        temp = temperature if temperature is not None else (h.loop.temperature if k > 1 else 0.0)
        temps.add(float(temp))
        trajs = rollout(policy, h, examples, task, n_samples=k, temperature=temp, max_new_tokens=max_new_tokens,
                        seed=seed)
        trajs_all += trajs
        rewards = [t.reward for t in trajs]
        key = "reward" if len(targets) == 1 and label == "best" else f"reward_{label}"
        result[key] = sum(rewards) / max(1, len(rewards))
        result.setdefault("harness_ids", {})[label] = h.id
        if len(targets) == 1:
            result.update(answer_stats(task, examples, trajs))
        if on_progress is not None:
            on_progress(i + 1, len(targets))
    if "reward" not in result:
        result["reward"] = max(v for key, v in result.items() if key.startswith("reward_"))
    if len(temps) == 1:  # the sampling temperature (0.0: greedy), when every target used the same
        result["temperature"] = temps.pop()
    return result, trajs_all


def answer_stats(task, examples, trajectories) -> dict[str, Any]:
    """How concentrated the answers are, so a reward that a constant answer would earn is not read as skill.

    From each example's first sample: ``answer_top`` (the most common answer, None if none parsed),
    ``answer_top_share`` (its share of the examples; 1.0 = the same answer to everything),
    ``answer_unparsed`` (share with no answer) and ``constant_floor`` (the reward of giving the most common
    *correct* answer to every example, on an exact-match task: 0.5 on balanced SUPPORTED / NOT_SUPPORTED).
    Empty when there are no examples."""
    from collections import Counter

    from fst_lab.tasks.base import answer_key

    if not examples:
        return {}
    first = {t.example_id: t for t in trajectories if t.sample == 0}
    keys = [answer_key(task, first[e.id]) if e.id in first else None for e in examples]
    parsed = Counter(k for k in keys if k is not None)
    top, count = parsed.most_common(1)[0] if parsed else (None, 0)
    gold = Counter(str(e.answer) for e in examples)
    n = len(examples)
    return dict(zip(ANSWER_KEYS, (top, count / n, keys.count(None) / n, max(gold.values()) / n)))


def plasticity(weights, task_name: str, config, *, level: int, steps: int,
               out_dir: Callable[[str], Path]) -> dict[str, list[float]]:
    """A fresh RL run of ``steps`` steps on a new task from a copy of the trained weights and one of the
    start weights (:class:`fst_lab.weights.Weights`). Returns the training reward per step of each."""
    import copy

    from fst_lab.harness import load_named
    from fst_lab.slow import SlowLearner
    from fst_lab.tasks import get_task

    new_task = get_task(task_name, level=level, seed=config.seed)
    seed_h = load_named(task_name)
    out = {}
    for label, make_copy in (("trained", weights.copy), ("base", lambda: copy.deepcopy(weights.base()))):
        with SlowLearner(make_copy(), new_task, [seed_h] * config.population_size, config.slow,
                         output_dir=str(out_dir(label))) as learner:
            learner.set_task(new_task, new_task.examples("train"))
            out[label] = [float(learner.step(1)[-1].get("reward", 0.0)) for _ in range(steps)]
    return out
