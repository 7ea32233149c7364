"""Two of the dashboard's tabs as self-contained widget panels: the rollout browser and the harness editor.

Each panel owns its widgets (``panel.widget``) and reads the session only through its public API;
the :class:`~fst_lab.ui.dashboard.Dashboard` places them in its tabs and tells them when to refresh.
"""

from __future__ import annotations

import threading
from typing import Callable

import ipywidgets as W

from fst_lab.harness import TOOL_DESC_PREFIX, Harness, HarnessError
from fst_lab.runs import read_rollouts, rollout_sources
from fst_lab.ui import render
from fst_lab.ui.editor import TOOLS_JSON, build_edit, editor_texts

MEMORY_SOURCE = "last evaluate() (in memory)"
COMPONENT_LABELS = {"system_prompt": "system prompt", "task_template": "task template",
                    "few_shot": "few-shot (YAML: a list of conversations)"}


class RolloutBrowser:
    """Pick a source (the newest by default: the last evaluation in memory, then the run's rollouts/
    files newest first, named in words) and a trajectory; shows its question, answer, tool calls and
    feedback."""

    def __init__(self, session):
        self.session = session
        self.source = W.Dropdown(description="source", layout=W.Layout(width="420px"))
        self.pick = W.Dropdown(description="trajectory", layout=W.Layout(width="560px"))
        self.view = W.HTML()
        self.source.observe(self._on_source, names="value")
        self.pick.observe(self._on_pick, names="value")
        self.trajectories: list[dict] = []
        self._loaded: str | None = None
        self._user_picked = False  # once the user chooses a source, new ones don't take over
        self._quiet = False
        self.widget = W.VBox([W.HBox([self.source, self.pick]), self.view])

    def refresh(self, select: str | None = None) -> None:
        """Offer the latest sources; follow the newest unless the user picked one (or ``select`` asks)."""
        opts = ([(MEMORY_SOURCE, MEMORY_SOURCE)] if self.session.last_trajectories else [])
        opts += [(render.rollout_source_label(name), name) for name in rollout_sources(self.session.run_dir)]
        values = [v for _, v in opts]
        current = self.source.value
        if select in values:
            target = select
        elif self._user_picked and current in values:
            target = current
        else:
            target = values[0] if values else None
        self._quiet = True
        try:
            if list(self.source.options) != opts:
                self.source.options = opts
            if self.source.value != target:
                self.source.value = target
        finally:
            self._quiet = False
        if target != self._loaded or select is not None:
            self.load(target)
        if not opts:
            self.view.value = "<i>no rollouts yet: take a step or evaluate</i>"

    def _on_source(self, change) -> None:
        if not self._quiet:
            self._user_picked = True
            self.load(change["new"])

    def load(self, source: str | None) -> None:
        if source is None:
            trajs = []
        elif source == MEMORY_SOURCE:
            trajs = [render.trajectory_dict(t) for t in (self.session.last_trajectories or [])]
        else:
            trajs = read_rollouts(self.session.run_dir, source)
        self.trajectories = trajs
        self._loaded = source
        self.pick.options = [(render.trajectory_label(t, i), i) for i, t in enumerate(trajs)]
        self.pick.value = 0 if trajs else None
        self._on_pick({"new": self.pick.value})

    def _on_pick(self, change) -> None:
        i = change["new"]
        if i is None or i >= len(self.trajectories):
            self.view.value = "<i>no trajectory selected</i>"
            return
        self.view.value = render.trajectory_html(self.trajectories[i])


class HarnessEditor:
    """One text box per component of a population member, the tools list as JSON, Apply / Revert.

    *Apply* validates first (tools JSON syntax and the harness schema); an invalid edit shows its
    error and changes nothing. A valid one becomes ``session.edit_harness(...)``: a new lineage node
    with origin ``manual`` ("not evaluated" until a step scores it), used from the next step.
    """

    def __init__(self, session, *, busy: Callable[[], bool], on_applied: Callable[[], None]):
        self.session = session
        self._busy, self._on_applied = busy, on_applied
        btn = dict(layout=W.Layout(width="auto"))
        self.target = W.Dropdown(description="harness", layout=W.Layout(width="620px"))
        self.target.observe(self._on_target, names="value")
        self.boxes: dict[str, W.Textarea] = {}
        self.tools_json = W.Textarea(layout=W.Layout(width="98%", height="180px"))
        self.tools_json.add_class("fst-mono")
        self.apply_button = W.Button(description="Apply", icon="check", button_style="primary", **btn)
        self.revert_button = W.Button(description="Revert", icon="undo", tooltip="reload the harness's texts", **btn)
        self.apply_button.on_click(lambda _: self.apply())
        self.revert_button.on_click(lambda _: self.load(self.harness))
        self.message = W.HTML()
        self.diff_view = W.HTML()
        self.harness: Harness | None = None
        self._fields = W.VBox()
        self._quiet = False
        self.widget = W.VBox([self.target, self._fields,
                              W.HTML("<b>tools</b> (the whole list, OpenAI function-calling JSON)"), self.tools_json,
                              W.HBox([self.apply_button, self.revert_button]), self.message, self.diff_view])

    def _label(self, i: int | None, h: Harness) -> str:
        score = self.session.population_scores.get(h.id)
        where = f"#{i}" if i is not None else "(no longer in the population)"
        return (f"{where} {h.name} @{h.id} · {h.lineage.origin} r{h.lineage.round} · "
                + (f"score {score:.3f}" if isinstance(score, (int, float)) else "not evaluated"))

    def refresh_targets(self) -> None:
        pop = list(self.session.population)
        opts = [(self._label(i, h), h.id) for i, h in enumerate(pop)]
        loaded = self.harness
        if loaded is not None and loaded.id not in [h.id for h in pop]:
            opts.append((self._label(None, loaded), loaded.id))
        if list(self.target.options) == opts:
            return
        self._quiet = True
        try:
            self.target.options = opts
            self.target.value = loaded.id if loaded is not None else (opts[0][1] if opts else None)
        finally:
            self._quiet = False
        if loaded is None and pop:
            self.load(pop[0])

    def _on_target(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        h = self.session.harnesses.get(change["new"])
        if h is not None:
            self.load(h)

    def load(self, harness: Harness | None) -> None:
        """Fill the editor with ``harness``'s texts (discarding unsaved edits)."""
        if harness is None:
            return
        self.harness = harness
        texts = editor_texts(harness)
        boxes, rows = {}, []
        for comp in harness.components():
            box = self.boxes.get(comp) or W.Textarea(layout=W.Layout(width="98%"))
            box.add_class("fst-mono")
            box.value = texts[comp]
            lines = texts[comp].count("\n") + 2
            box.layout.height = f"{min(max(lines, 3), 16) * 18 + 10}px"
            boxes[comp] = box
            label = (COMPONENT_LABELS.get(comp)
                     or f"description of tool <code>{render.esc(comp[len(TOOL_DESC_PREFIX):])}</code>")
            evolvable = " (evolvable)" if comp in harness.evolvable else " (fixed: GEPA leaves it alone)"
            rows += [W.HTML(f"<b>{label}</b><span style='color:#888'>{evolvable}</span>"), box]
        self.boxes = boxes
        self._fields.children = rows
        self.tools_json.value = texts[TOOLS_JSON]
        if self.target.value != harness.id and harness.id in [v for _, v in self.target.options]:
            self._quiet = True
            try:
                self.target.value = harness.id
            finally:
                self._quiet = False

    def values(self) -> dict[str, str]:
        texts = {comp: box.value for comp, box in self.boxes.items()}
        texts[TOOLS_JSON] = self.tools_json.value
        return texts

    def apply(self, note: str = "dashboard edit") -> Harness | None:
        """Validate the texts and hand them to ``session.edit_harness`` (returns the new harness).

        While a step runs, the edit is applied by a helper thread at the next step boundary (the
        session holds its lock during a step); the result shows up in the editor when it lands.
        """
        old = self.harness
        if old is None:
            self.message.value = render.error_html("no harness loaded")
            return None
        if old.id not in [h.id for h in self.session.population]:
            self.message.value = render.error_html(
                f"{old.id} is no longer in the population (a fast step replaced it): pick a target again")
            return None
        try:
            edit = build_edit(old, self.values())
        except HarnessError as e:
            self.message.value = render.error_html(f"not applied — {e}")
            self.diff_view.value = ""
            return None
        if edit is None:
            self.message.value = render.ok_html("nothing changed")
            return None
        if self._busy():
            self.message.value = render.ok_html("valid; applying at the next step boundary…")
            threading.Thread(target=self._apply, args=(old, edit, note), daemon=True, name="fst-dashboard-edit").start()
            return None
        return self._apply(old, edit, note)

    def _apply(self, old: Harness, edit, note: str) -> Harness | None:
        try:
            new = self.session.edit_harness(old.id, edit, note=note)
        except (HarnessError, KeyError, IndexError, ValueError) as e:
            self.message.value = render.error_html(f"not applied — {e}")
            return None
        self.diff_view.value = render.diff_html(old.diff(new), f"{old.name}@{old.id} → {new.name}@{new.id} (manual)")
        self.message.value = render.ok_html(
            f"applied: new harness {new.id} (origin manual, parent {old.id}, not evaluated yet); the next step uses it")
        self.load(new)
        self._on_applied()
        return new
