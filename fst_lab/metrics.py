"""The paper's measurements, as pure functions over metric records (no torch).

- running-max mean@k validation reward vs samples (or RL steps);
- samples to reach a target (e.g. RL-only's peak) and the ratio between modes;
- ScaleRL-style 4-parameter sigmoid fit -> asymptote;
- KL to base at matched accuracy.

Records are :mod:`fst_lab.records` (``samples`` is cumulative; ``kl`` is the probe KL to the start weights).
"""

from __future__ import annotations

import math
from typing import Sequence

from fst_lab import records
from fst_lab.records import running_max


def mean_at_k(rewards: Sequence[float]) -> float:
    return float(sum(rewards) / len(rewards)) if rewards else 0.0


def curve(recs: list[dict], *, key: str = "reward", x: str = "samples", kind: str = "eval",
          running: bool = True) -> tuple[list[float], list[float]]:
    """(xs, ys) of ``key`` over records of ``kind`` (see :func:`fst_lab.records.series`), ordered by x;
    running-max when ``running`` (the paper's curves)."""
    pts = sorted(zip(*records.series(recs, kind, key, x)), key=lambda p: p[0])  # stable: ties keep run order
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return xs, (running_max(ys) if running else ys)


def samples_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """First x at which the (running-max) curve reaches ``target``; None if never."""
    for x, y in zip(xs, ys):
        if y >= target - 1e-12:
            return float(x)
    return None


def efficiency_ratio(base_xy, other_xy) -> dict:
    """How many times fewer samples ``other`` needs to reach ``base``'s peak."""
    bx, by = base_xy
    ox, oy = other_xy
    if not by:
        return {"target": None, "base_samples": None, "other_samples": None, "ratio": None}
    target = max(by)
    b = samples_to_reach(bx, running_max(by), target)
    o = samples_to_reach(ox, running_max(oy), target)
    ratio = (b / o) if (b and o) else None
    return {"target": target, "base_samples": b, "other_samples": o, "ratio": ratio}


def sigmoid(x, a, b, c, d):
    """ScaleRL-style: R(x) = d + (a - d) / (1 + (c / x)^b); a is the asymptote."""
    import numpy as np

    x = np.maximum(np.asarray(x, dtype=float), 1e-9)
    return d + (a - d) / (1.0 + (c / x) ** b)


def fit_asymptote(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Fit the 4-parameter sigmoid; returns {asymptote, midpoint, slope, start, ok}."""
    import numpy as np

    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    if len(xs) < 4 or np.ptp(ys) == 0:
        y = float(ys[-1]) if len(ys) else float("nan")
        return {"asymptote": y, "midpoint": None, "slope": None, "start": float(ys[0]) if len(ys) else None,
                "ok": False}
    try:
        from scipy.optimize import curve_fit

        p0 = [float(ys.max()), 1.0, float(np.median(xs[xs > 0])) if (xs > 0).any() else 1.0, float(ys.min())]
        bounds = ([0.0, 0.01, 1e-6, 0.0], [1.0, 20.0, float(xs.max()) * 100 + 1, 1.0])
        popt, _ = curve_fit(sigmoid, np.maximum(xs, 1e-9), ys, p0=p0, bounds=bounds, maxfev=20000)
        return {"asymptote": float(popt[0]), "slope": float(popt[1]), "midpoint": float(popt[2]),
                "start": float(popt[3]), "ok": True}
    except Exception:
        return {"asymptote": float(ys.max()), "midpoint": None, "slope": None, "start": float(ys[0]), "ok": False}


def kl_at_matched_reward(reward_kl_a: Sequence[tuple[float, float]], reward_kl_b: Sequence[tuple[float, float]]) -> dict:
    """KL of each run at the highest reward both reach (linear interpolation of KL over reward)."""
    if not reward_kl_a or not reward_kl_b:
        return {"matched_reward": None, "kl_a": None, "kl_b": None, "ratio": None}
    target = min(max(r for r, _ in reward_kl_a), max(r for r, _ in reward_kl_b))

    def kl_at(points):
        pts = sorted(points)
        for r, k in pts:
            if r >= target - 1e-12:
                return k
        return pts[-1][1]

    a, b = kl_at(reward_kl_a), kl_at(reward_kl_b)
    ratio = (b / a) if a and not math.isclose(a, 0.0) else None
    return {"matched_reward": target, "kl_a": a, "kl_b": b, "ratio": ratio}
