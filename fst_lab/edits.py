"""Hand edits: a person's change to a harness becomes a new lineage node (origin ``manual``).

The session applies them (``Session.edit_harness``, or a file edited in ``RUN/harnesses/current/``);
these functions build the new harness and find which member it replaces. The edit never inherits its
parent's score: it reads "not evaluated" until a fast step or an evaluation scores it.

    >>> new = manual_edit(old, {"system_prompt": "Be terse.\\n"}, round=3, note="shorter")
    >>> new.lineage.origin, new.lineage.parents == (old.id,)
    ('manual', True)
"""

from __future__ import annotations

from typing import Sequence

from fst_lab.harness import Harness, HarnessError


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
