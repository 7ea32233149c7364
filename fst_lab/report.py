"""Tables and PNG plots comparing run directories (``fst-lab compare``; reads them through the pure loaders).

    >>> table, pngs = compare_runs(["runs/fst-math-1", "runs/rl-math-1"], out_dir="runs/compare")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fst_lab import records
from fst_lab.records import EVAL, FAST, LABELS, SLOW
from fst_lab.runs import load_run
from fst_lab.ui import render


def summary_rows(run_dirs: Sequence[str | Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        run = load_run(d)
        ev = records.values(run.metrics, EVAL, "reward")
        slow_last, kl_last = records.latest(run.metrics, SLOW, "reward"), records.latest(run.metrics, SLOW, "kl")
        fast_best = records.values(run.metrics, FAST, "best_val")
        c = run.state.get("counters", {})
        rows.append({
            "run": run.name, "mode": run.config.get("mode"), "task": run.config.get("task"),
            "cycles": c.get("cycle", 0), "rl_steps": c.get("rl_step", 0), "fast_rounds": c.get("fast_round", 0),
            "samples_rl": c.get("samples_rl", 0), "samples_fast": c.get("samples_fast", 0),
            "val_first": ev[0] if ev else None, "val_last": ev[-1] if ev else None,
            "val_max": max(ev) if ev else None,
            "answers_last": render.answers_text(records.latest(run.metrics, EVAL, "answer_top_share")),
            "train_reward_last": slow_last["reward"] if slow_last else None,
            "train_unparsed_last": slow_last.get("fst/answer_unparsed") if slow_last else None,
            "kl_last": kl_last["kl"] if kl_last else None,
            "best_fast_val": max(fast_best) if fast_best else None,
            "population": len(run.state.get("population", [])),
            **proposal_summary(run.proposals()),
        })
    return rows


def proposal_summary(proposals: list[dict]) -> dict[str, str | None]:
    """What the fast loop's two operators achieved: ``reflections``: "A accepted, V valid of N" (valid: a
    harness GEPA scored on its minibatch, accepted or not; the rest were unusable replies or failed calls), with
    why the unusable replies were ("; 5 no fenced block, 3 cut off at the token limit, 1 other": the two commonest
    reasons, the rest counted), and ``bootstraps``: "A accepted of N".
    None for a run without GEPA rounds. A run whose reflections are all unusable evolves its harness by
    bootstrapped demos alone: this is where a user sees it, and why."""
    from collections import Counter

    from fst_lab.adapter import invalid_reason

    if not proposals:
        return {"reflections": None, "bootstraps": None}
    out: dict[str, str | None] = {}
    for op, key in (("reflect", "reflections"), ("bootstrap", "bootstraps")):
        ps = [p for p in proposals if p.get("operator") == op]
        acc = sum(p.get("status") == "accepted" for p in ps)
        valid = sum(p.get("status") in ("accepted", "rejected") for p in ps)
        out[key] = f"{acc} accepted, {valid} valid of {len(ps)}" if op == "reflect" else f"{acc} accepted of {len(ps)}"
        why = Counter(p.get("reason") or invalid_reason(p.get("detail") or "")
                      for p in ps if p.get("status") == "invalid")
        why.update("no change" for p in ps if p.get("status") == "noop")  # the reply was the current text back
        if op == "reflect" and why:  # the two commonest reasons by name, the rest counted, so they add up
            top = why.most_common(2)
            rest = sum(why.values()) - sum(n for _, n in top)
            out[key] += "; " + ", ".join(f"{n} {r}" for r, n in top) + (f", {rest} other" if rest else "")
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(out)


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path = "runs/compare") -> tuple[str, list[Path]]:
    """Markdown table + PNGs: reward vs samples (running max), KL vs reward, per-stage curves."""
    from fst_lab.ui import plots

    runs = [load_run(d) for d in run_dirs]
    # the same figures the dashboard and the app draw, one colour per run
    pngs = plots.compare_pngs({run.name: run.metrics for run in runs}, out_dir)
    out = Path(out_dir)
    if any(len({m.get("stage", 0) for m in r.metrics}) > 1 for r in runs):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for run in runs:
            for stage in sorted({m.get("stage", 0) for m in run.metrics}):
                pts = [(m["rl_step"], m["reward"]) for m in records.of_kind(run.metrics, SLOW)
                       if m.get("stage", 0) == stage and m.get("reward") is not None]
                if pts:
                    task = next((m.get("task") for m in run.metrics if m.get("stage", 0) == stage), stage)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"{run.name}: {task}")
        ax.set_xlabel(LABELS["rl_step"])
        ax.set_ylabel("train reward")
        ax.set_title("Per-stage curves")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / "per_stage.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        pngs.append(p)
    return markdown_table(summary_rows(run_dirs)), pngs
