"""Pareto selection of a harness population from per-validation-instance scores (GEPA's idea of a
front of specialists, not a single best prompt). Used by :func:`fst_lab.fast.fast_step`.

    >>> select_population({"a": [1, 0], "b": [0, 1], "c": [0, 0]}, 2)
    ['a', 'b']
"""

from __future__ import annotations

from typing import Mapping, Sequence


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v)) if v else 0.0


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
