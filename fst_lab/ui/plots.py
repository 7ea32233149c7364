"""The dashboard's four live plots, drawn from metric records into PNG bytes.

Pure functions over the records of ``metrics.jsonl`` (what ``Session.metrics`` and
``load_run(...).metrics`` hold). They use matplotlib's object API on an Agg canvas, never
``pyplot``'s global state, so a worker thread can redraw while the notebook runs other cells.

    >>> png = progress_png(session.metrics, session.population_scores, origins)
    >>> fig = progress_figure(load_run("runs/demo").metrics)      # a Figure for a notebook cell
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from fst_lab.runs import running_max

ORIGIN_COLORS = {"seed": "#7f7f7f", "gepa": "#1f77b4", "bootstrap": "#2ca02c", "manual": "#ff7f0e",
                 "merge": "#9467bd"}
# Keys a slow-step record may use for {harness id: mean reward of its rollouts}.
PER_HARNESS_KEYS = ("reward_by_harness", "harness_rewards", "per_harness_reward", "rewards_by_harness")


def _of(records: Sequence[dict], kind: str, *keys: str) -> list[dict]:
    return [r for r in records if r.get("kind") == kind and all(r.get(k) is not None for k in keys)]


def _kl(r: dict) -> float | None:
    """A slow step's KL to the start weights: TRL's on the step's tokens, else the fixed probe's."""
    v = r.get("kl") if r.get("kl") is not None else r.get("kl_probe")
    return float(v) if isinstance(v, (int, float)) else None


def per_harness_rewards(records: Sequence[dict]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """(x label, {harness id: [(x, reward)]}) from slow steps if they report it, else fast rounds' scores."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in _of(records, "slow"):
        for key in PER_HARNESS_KEYS:
            if isinstance(r.get(key), dict):
                for hid, v in r[key].items():
                    if isinstance(v, (int, float)):
                        out.setdefault(hid, []).append((r.get("rl_step", 0), float(v)))
                break
    if out:
        return "RL step", out
    for r in _of(records, "fast"):
        scores = r.get("val_scores")
        if isinstance(scores, dict):
            for hid, v in scores.items():
                if isinstance(v, (int, float)):
                    out.setdefault(hid, []).append((r.get("round", 0), float(v)))
    return "fast round (GEPA val score)", out


def progress_figure(records: Sequence[dict], population_scores: Mapping[str, float] | None = None,
                    origins: Mapping[str, str] | None = None, *, title: str = ""):
    """A 2x2 Figure: reward vs samples, KL vs reward, per-harness reward, current population scores."""
    from matplotlib.figure import Figure

    records = list(records)
    fig = Figure(figsize=(10, 6.4), dpi=80)
    (a, b), (c, d) = fig.subplots(2, 2)

    # Reward vs samples: train reward per RL step, running-max validation (the paper's curve), GEPA's best.
    slow = _of(records, "slow", "reward", "samples")
    if slow:
        a.plot([r["samples"] for r in slow], [r["reward"] for r in slow], ".-", alpha=0.6, label="train (RL step)")
    ev = sorted((r["samples"], r["reward"]) for r in _of(records, "eval", "reward", "samples"))
    if ev:
        a.plot([x for x, _ in ev], running_max([y for _, y in ev]), "o-", label="val (running max)")
    fast = _of(records, "fast", "best_val", "samples")
    if fast:
        a.plot([r["samples"] for r in fast], [r["best_val"] for r in fast], "x", ms=8, label="GEPA best val")
    a.set(title="Reward vs samples", xlabel="samples (RL rollouts + GEPA metric calls)", ylabel="reward")

    # KL vs reward: the paper's "less drift at matched accuracy" view.
    kl = [r for r in _of(records, "slow", "reward") if _kl(r) is not None]
    if kl:
        sc = b.scatter([_kl(r) for r in kl], [r["reward"] for r in kl], c=[r.get("rl_step", 0) for r in kl],
                       cmap="viridis", s=18, label="train")
        fig.colorbar(sc, ax=b, label="RL step")
    kp = _of(records, "eval", "kl_probe", "reward")
    if kp:
        b.scatter([r["kl_probe"] for r in kp], [r["reward"] for r in kp], marker="^", color="C3", s=30, label="val")
    b.set(title="KL(policy || base) vs reward", xlabel="KL", ylabel="reward")

    # Per-harness reward: how each population member does.
    xlabel, series = per_harness_rewards(records)
    for i, (hid, pts) in enumerate(sorted(series.items())):
        pts.sort()
        color = ORIGIN_COLORS.get((origins or {}).get(hid, ""), f"C{i % 10}")
        c.plot([p[0] for p in pts], [p[1] for p in pts], ".-", color=color, label=hid[:8])
    c.set(title="Reward per harness", xlabel=xlabel, ylabel="reward")
    if 0 < len(series) <= 8:
        c.legend(fontsize=7)

    # Current population: score per member, coloured by origin.
    scores = dict(population_scores or {})
    if scores:
        ids = list(scores)
        vals = [scores[h] if scores[h] is not None else 0.0 for h in ids]
        cols = [ORIGIN_COLORS.get((origins or {}).get(h, ""), "C0") for h in ids]
        d.barh(range(len(ids)), vals, color=cols)
        d.set_yticks(range(len(ids)), [f"{h[:8]} ({(origins or {}).get(h, '?')})" for h in ids], fontsize=7)
        d.invert_yaxis()
    d.set(title="Population scores (GEPA val)", xlabel="score", xlim=(0, 1.05))
    for ax in (a, b, c):  # rewards live in [0, 1]: fixed axes make refreshes comparable
        ax.set_ylim(-0.05, 1.05)

    for ax in (a, b, c, d):
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="#999")
    if a.get_legend_handles_labels()[0]:
        a.legend(fontsize=7)
    if b.get_legend_handles_labels()[0]:
        b.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def progress_png(records: Sequence[dict], population_scores: Mapping[str, float] | None = None,
                 origins: Mapping[str, str] | None = None, *, title: str = "") -> bytes:
    return figure_png(progress_figure(records, population_scores, origins, title=title))
