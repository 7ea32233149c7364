"""The population: its ranking, the K harnesses the slow loop trains on, and hand edits.

A member without a score is "not evaluated" (a fresh hand edit: it never inherits its parent's score);
it ranks after every scored member, so it is never "best" before it is scored, yet the slow loop still
trains on it. A hand edit (``Session.edit_harness``, or a file edited in ``RUN/harnesses/current/``)
becomes a new lineage node with origin ``manual``; these functions build it and find the member it
replaces.

    >>> new = manual_edit(old, {"system_prompt": "Be terse.\\n"}, round=3, note="shorter")
    >>> new.lineage.origin, new.lineage.parents == (old.id,)
    ('manual', True)
"""

from __future__ import annotations

from typing import Iterable, Sequence

from fst_lab.harness import Harness, HarnessError


def ranked(population: Sequence[Harness], scores: dict[str, float]) -> list[Harness]:
    """Best score first; members not evaluated yet after the scored ones, in population order."""
    return sorted(population, key=lambda h: -scores.get(h.id, float("-inf")))


def for_training(population: Sequence[Harness], scores: dict[str, float], k: int) -> list[Harness]:
    """Exactly ``k`` harnesses for the slow loop, best first (cycled when the population is smaller)."""
    pop = ranked(population, scores)
    return [pop[i % len(pop)] for i in range(k)]


def lineage_rows(harnesses: Iterable[Harness], population: Sequence[Harness], scores: dict[str, float]) -> list[dict]:
    """One row per harness for lineage views (``score`` None: not evaluated)."""
    return [{"id": h.id, "name": h.name, "origin": h.lineage.origin, "round": h.lineage.round,
             "parents": list(h.lineage.parents), "note": h.lineage.note, "in_population": h in population,
             "score": scores.get(h.id)} for h in harnesses]


def manual_edit(old: Harness, updates: dict[str, str] | Harness, *, round: int, note: str = "",
                source: str = "<manual edit>") -> Harness:
    """``old`` with ``updates`` ({component: text}, or a whole Harness) as a new ``manual`` candidate."""
    if isinstance(updates, Harness):
        d = updates.to_dict(with_lineage=False)
        d["lineage"] = {"parents": [old.id], "origin": "manual", "round": round, "note": note}
        return Harness.from_dict(d, source=source)
    if isinstance(updates, dict) and updates:
        return old.with_components(updates, origin="manual", round=round, parents=[old.id], note=note)
    raise HarnessError("edit_harness needs a non-empty {component: text} mapping or a Harness")


def resolve_target(population: Sequence[Harness], target: int | str | None, best: Harness) -> int:
    """Index of ``target`` in ``population``: an index (negative allowed), an id or name, or None (``best``)."""
    if target is None:
        return list(population).index(best)
    if isinstance(target, int):
        if not -len(population) <= target < len(population):
            raise IndexError(f"population has {len(population)} harnesses; no index {target}")
        return target % len(population)
    for i, h in enumerate(population):
        if h.id == target or h.name == target:
            return i
    raise KeyError(f"no harness '{target}' in the population {[h.id for h in population]}")
