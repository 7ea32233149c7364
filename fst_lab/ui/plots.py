"""Every plot fst_lab draws, from metric records: the dashboard, the app, `fst-lab compare`, benchmarks.

One module so a curve looks the same wherever it is shown (live in the notebook, in the browser, or
as a PNG next to a benchmark): the same colours, markers, names and fonts. Pure functions over the
records of ``metrics.jsonl`` (read through :mod:`fst_lab.records`), drawn with matplotlib's object
API on an Agg canvas, never ``pyplot``'s global state, so a worker thread can redraw while the
notebook runs other cells. No ipywidgets or Gradio imports.

    >>> png = progress_png(session.metrics, session.population_scores, origins)  # the dashboard's 2x2
    >>> reward_fig, kl_fig = curve_figures(load_run("runs/demo").metrics)       # the app's two plots
    >>> compare_pngs({"fst": run_a.metrics, "rl": run_b.metrics}, "runs/compare")  # fst-lab compare

Conventions: one colour per harness (tab10, in order of first appearance) with its origin as the
marker (seed ●, bootstrap ▲, gepa ■, merge ◆, manual ✚); training points are small dots with a thin
line, validation points are large hollow markers, always with a legend; step/round axes and colour
bars have integer ticks; the KL is ``kl`` (per-token KL of the policy to its start weights on the
probe set) and is named the same everywhere (:data:`fst_lab.records.LABELS`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

from fst_lab import records as R

# origin colours are for origin *labels* in tables; plot lines get one colour per harness (harness_colors)
ORIGIN_COLORS = {"seed": "#7f7f7f", "gepa": "#1f77b4", "reflect": "#1f77b4", "bootstrap": "#2ca02c",
                 "manual": "#ff7f0e", "merge": "#9467bd"}
ORIGIN_MARKERS = {"seed": "o", "bootstrap": "^", "gepa": "s", "reflect": "s", "merge": "D", "manual": "P",
                  "consolidated": "*"}
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf"]
TRAIN_COLOR, VAL_COLOR, GEPA_COLOR = "#1f77b4", "#d62728", "#2ca02c"
FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
        "legend.fontsize": 9}
KL_LABEL = R.LABELS["kl"]
SAMPLES_LABEL = R.LABELS["samples"]


def _figure(w: float, h: float, dpi: int = 100):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(w, h), dpi=dpi)
    return fig


def _fonts(ax) -> None:
    """Legible fonts on an axes (rc_context does not reach axes created later, so set them here)."""
    ax.title.set_fontsize(FONT["axes.titlesize"])
    ax.xaxis.label.set_fontsize(FONT["axes.labelsize"])
    ax.yaxis.label.set_fontsize(FONT["axes.labelsize"])
    ax.tick_params(labelsize=FONT["xtick.labelsize"])


def _integer_ticks(axis) -> None:
    """Whole-number ticks on a count axis; a view narrower than 2 (one point: 6 samples) is widened to ±1 around
    its middle, else the locator falls back to fractions (5.68, 5.76, … samples)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = axis.get_view_interval()
    if abs(hi - lo) < 2 and axis.axes.has_data() and axis is axis.axes.xaxis:
        mid = (lo + hi) / 2
        axis.axes.set_xlim(mid - 1, mid + 1)


def _empty(ax, text: str = "no data yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888", fontsize=11)


def harness_colors(ids: Sequence[str]) -> dict[str, str]:
    """One colour per harness id, in the given order (tab10, cycling)."""
    out: dict[str, str] = {}
    for hid in ids:
        if hid not in out:
            out[hid] = TAB10[len(out) % len(TAB10)]
    return out


def harness_label(hid: str, origins: Mapping[str, str] | None) -> str:
    origin = (origins or {}).get(hid)
    return f"{hid[:8]} ({origin})" if origin else hid[:8]


# ---------------------------------------------------------------------------- panels (one axes each)
def _sampling(recs: Sequence[dict]) -> str:
    """", greedy" when every evaluation sampled at temperature 0 (the default mean@1), ", temperature 0.7" when
    all at one other, "" when unrecorded or mixed: so a gap to the sampled training reward is not misread."""
    temps = R.values(recs, R.EVAL, "temperature")
    if not temps or len(temps) != len(R.of_kind(recs, R.EVAL)) or len(set(temps)) != 1:
        return ""
    return ", greedy" if temps[0] == 0 else f", temperature {temps[0]:g}"


def draw_floor(ax, floor: float, *, color: str = "#777", prefix: str = "") -> None:
    """A dotted line at what one constant answer scores (:func:`fst_lab.records.constant_floor`)."""
    ax.axhline(floor, ls=":", lw=1.2, color=color, label=f"{prefix}one constant answer ({floor:.3f})")


def draw_reward_vs_samples(ax, recs: Sequence[dict], *, color: str | None = None, name: str = "",
                           floor: bool = True) -> bool:
    """Training reward per RL step, validation (each evaluation, and its running max), GEPA's best on its own
    window, vs samples; and, where the evaluations recorded it, what one constant answer scores on the validation
    set (a dotted line)."""
    recs = R.normalize_all(recs)
    prefix = f"{name}: " if name else ""
    drew = False
    xs, ys = R.series(recs, R.SLOW, "reward")
    if xs:
        ax.plot(xs, ys, ".-", lw=1, ms=5, alpha=0.55, color=color or TRAIN_COLOR,
                label=f"{prefix}train (RL step, sampled)")
        drew = True
    xs, ys = R.series(recs, R.EVAL, "reward")
    if xs:
        pts = sorted(zip(xs, ys))
        ax.plot([p[0] for p in pts], R.running_max([p[1] for p in pts]), "-", lw=2, drawstyle="steps-post",
                color=color or VAL_COLOR, label=f"{prefix}validation (running max{_sampling(recs)})")
        # each evaluation as it scored: a running max hides a late drop and rewards evaluations that scatter
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=7, mfc="white", mew=1.5, color=color or VAL_COLOR,
                label=f"{prefix}validation (each evaluation)")
        drew = True
        value = R.constant_floor(R.latest(recs, R.EVAL, "constant_floor"))
        if floor and value is not None:
            draw_floor(ax, value, color=color or "#777", prefix=prefix)
    xs, ys = R.series(recs, R.FAST, "best_val")
    if xs:
        ax.plot(xs, ys, "s", ms=7, mfc="none", mew=1.5, color=color or GEPA_COLOR,
                label=f"{prefix}{R.LABELS['best_val']}")
        drew = True
    ax.set(title="Reward vs samples", xlabel=SAMPLES_LABEL, ylabel="reward", ylim=(-0.05, 1.05))
    _integer_ticks(ax.xaxis)  # samples are counts
    return drew


def draw_kl_vs_reward(ax, recs: Sequence[dict], *, color: str | None = None, name: str = "", colorbar: bool = True,
                      fig=None) -> bool:
    """KL to the start weights vs reward: training (RL steps, coloured by step) and validation points."""
    recs = R.normalize_all(recs)
    prefix = f"{name}: " if name else ""
    drew = False
    slow = [r for r in R.of_kind(recs, R.SLOW) if r.get("kl") is not None and r.get("reward") is not None]
    if slow:
        steps = [r.get("rl_step", 0) for r in slow]
        if color is None:
            sc = ax.scatter([r["kl"] for r in slow], [r["reward"] for r in slow], c=steps, cmap="viridis", s=28,
                            label=f"{prefix}train (RL steps)")
            if colorbar and fig is not None:
                cb = fig.colorbar(sc, ax=ax, label="RL step")
                _integer_ticks(cb.ax.yaxis)
                if len(set(steps)) == 1:
                    cb.set_ticks([steps[0]])
        else:
            ax.scatter([r["kl"] for r in slow], [r["reward"] for r in slow], color=color, s=20, alpha=0.6,
                       label=f"{prefix}train (RL steps)")
        drew = True
    ev = [r for r in R.of_kind(recs, R.EVAL) if r.get("kl") is not None and r.get("reward") is not None]
    if ev:
        ax.scatter([r["kl"] for r in ev], [r["reward"] for r in ev], marker="^", s=70, facecolors="none",
                   edgecolors=color or VAL_COLOR, linewidths=1.8, label=f"{prefix}validation")
        drew = True
    ax.set(title="KL vs reward", xlabel=KL_LABEL, ylabel="reward", ylim=(-0.05, 1.05))
    return drew


def per_harness_rewards(recs: Sequence[dict]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """(x label, {harness id: [(x, reward)]}): slow steps' ``reward_by_harness`` if recorded, else the
    fast rounds' GEPA validation scores."""
    recs = R.normalize_all(recs)
    out: dict[str, list[tuple[float, float]]] = {}
    for r in R.of_kind(recs, R.SLOW):
        by = r.get("reward_by_harness")
        if isinstance(by, dict):
            for hid, v in by.items():
                if isinstance(v, (int, float)):
                    out.setdefault(hid, []).append((r.get("rl_step", 0), float(v)))
    if out:
        return "RL step", out
    for r in R.of_kind(recs, R.FAST):
        scores = r.get("val_scores")
        if isinstance(scores, dict):
            for hid, v in scores.items():
                if isinstance(v, (int, float)):
                    out.setdefault(hid, []).append((r.get("fast_round", r.get("round", 0)), float(v)))
    return "fast round (GEPA validation score)", out


def draw_per_harness(ax, recs: Sequence[dict], origins: Mapping[str, str] | None = None,
                     colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """Reward per harness: one colour per harness, its origin as the marker. Returns {id: colour}."""
    xlabel, series = per_harness_rewards(recs)
    colors = dict(colors or harness_colors(list(series)))
    for hid, pts in series.items():
        pts = sorted(pts)
        colors.setdefault(hid, TAB10[len(colors) % len(TAB10)])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", lw=1.5, color=colors[hid],
                marker=ORIGIN_MARKERS.get((origins or {}).get(hid, ""), "o"), ms=7, label=harness_label(hid, origins))
    ax.set(title="Reward per harness", xlabel=xlabel, ylabel="reward", ylim=(-0.05, 1.05))
    _integer_ticks(ax.xaxis)
    if 0 < len(series) <= 10:
        ax.legend(loc="best")
    return {h: colors[h] for h in series}


def unscored(mode: str | None) -> str:
    """What a population member without a GEPA score is called: "not evaluated" (a fresh hand edit, a seed
    before the first round), or, in an RL-only run, which never runs a GEPA round, "no GEPA score (RL-only)"."""
    return "no GEPA score (RL-only)" if mode == "rl" else "not evaluated"


def draw_population(ax, scores: Mapping[str, float | None], origins: Mapping[str, str] | None = None,
                    colors: Mapping[str, str] | None = None, mode: str | None = None) -> bool:
    """The current population's GEPA validation scores (bar per harness, value written beside it, so a
    score of 0 still shows; :func:`unscored` for a harness without a score)."""
    ids = list(scores)
    ax.set(title="Population scores (GEPA validation)", xlabel="score", xlim=(0, 1.15))
    if not ids:
        return False
    colors = dict(colors or {})
    colors.update({h: c for h, c in harness_colors(ids).items() if h not in colors})
    vals = [scores[h] for h in ids]
    ax.barh(range(len(ids)), [v if isinstance(v, (int, float)) else 0.0 for v in vals],
            color=[colors[h] for h in ids], height=0.6)
    for i, v in enumerate(vals):
        text = f"{v:.3f}" if isinstance(v, (int, float)) else unscored(mode)
        ax.text((v if isinstance(v, (int, float)) else 0.0) + 0.02, i, text, va="center", fontsize=10)
    ax.set_yticks(range(len(ids)), [harness_label(h, origins) for h in ids])
    ax.invert_yaxis()
    return True


# ---------------------------------------------------------------------------- whole figures
def progress_figure(records: Sequence[dict], population_scores: Mapping[str, float | None] | None = None,
                    origins: Mapping[str, str] | None = None, *, title: str = "", mode: str | None = None):
    """The dashboard's 2x2 Figure: reward vs samples, KL vs reward, reward per harness, population."""
    recs = R.normalize_all(records)
    fig = _figure(11, 7.2, dpi=90)
    (a, b), (c, d) = fig.subplots(2, 2)
    drew = {a: draw_reward_vs_samples(a, recs), b: draw_kl_vs_reward(b, recs, fig=fig)}
    order = list(population_scores or {})
    colors = harness_colors(order + list(per_harness_rewards(recs)[1]))
    drew[c] = bool(draw_per_harness(c, recs, origins, colors))
    drew[d] = draw_population(d, dict(population_scores or {}), origins, colors, mode=mode)
    for ax in (a, b, c, d):
        _fonts(ax)
        if not drew[ax]:
            _empty(ax)
    for ax in (a, b):
        if drew[ax]:
            ax.legend(loc="best")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def curve_figures(records: Sequence[dict] | None):
    """The app's two figures: reward vs samples, and KL vs reward (training vs validation, with legends)."""
    recs = R.normalize_all(records or [])
    f1, f2 = _figure(6.4, 4.2), _figure(6.4, 4.2)
    ax, bx = f1.subplots(), f2.subplots()
    if draw_reward_vs_samples(ax, recs):
        ax.legend(loc="best")
    else:
        _empty(ax, "no reward records yet")
    if draw_kl_vs_reward(bx, recs, fig=f2):
        bx.legend(loc="best")
    else:
        _empty(bx, "no KL records yet")
    for x, f in ((ax, f1), (bx, f2)):
        _fonts(x)
        f.tight_layout()
    return f1, f2


def compare_figures(runs: Mapping[str, Sequence[dict]]):
    """`fst-lab compare`: reward vs samples and KL vs reward, one colour per run, same styles as live."""
    f1, f2 = _figure(7, 4.6), _figure(7, 4.6)
    ax, bx = f1.subplots(), f2.subplots()
    colors = harness_colors(list(runs))  # one colour per run here
    any1 = any2 = False
    floors: dict[float, list[str]] = {}  # one line per distinct floor, not one per run
    for name, recs in runs.items():
        any1 |= draw_reward_vs_samples(ax, recs, color=colors[name], name=name, floor=False)
        any2 |= draw_kl_vs_reward(bx, recs, color=colors[name], name=name)
        value = R.constant_floor(R.latest(R.normalize_all(recs), R.EVAL, "constant_floor"))
        if value is not None:
            floors.setdefault(round(value, 3), []).append(name)
    for value, names in floors.items():
        draw_floor(ax, value, prefix="" if len(floors) == 1 else f"{', '.join(names)}: ")
    for x, f, drew in ((ax, f1, any1), (bx, f2, any2)):
        _fonts(x)
        if drew:
            x.legend(loc="best", fontsize=8)
        else:
            _empty(x)
        f.tight_layout()
    return f1, f2


def compare_pngs(runs: Mapping[str, Sequence[dict]], out_dir: str | Path) -> list[Path]:
    """Write reward_vs_samples.png and kl_vs_reward.png for ``{run name: records}``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig, name in zip(compare_figures(runs), ("reward_vs_samples.png", "kl_vs_reward.png")):
        p = out / name
        p.write_bytes(figure_png(fig))
        paths.append(p)
    return paths


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def progress_png(records: Sequence[dict], population_scores: Mapping[str, float | None] | None = None,
                 origins: Mapping[str, str] | None = None, *, title: str = "", mode: str | None = None) -> bytes:
    return figure_png(progress_figure(records, population_scores, origins, title=title, mode=mode))
