"""The notebook face of a Session: buttons, live plots, population, rollouts and a harness editor.

    >>> from fst_lab.ui import Dashboard
    >>> dash = Dashboard(session)     # the last expression of a cell renders it
    >>> dash.slow_button.click(); dash.wait()      # the same as clicking in JupyterLab

Work started by a button runs in one background thread, so the notebook stays responsive; buttons
are disabled while it runs and a worker error is shown in the status area instead of raising. The
plots, tables and status follow the session through ``session.listeners``, so they also update when
a cell calls ``session.slow_step()`` directly. Listener callbacks arrive on the worker thread: they
only assign widget values (``Image.value``, ``HTML.value``), which is safe from any thread.

The editor's *Apply* validates what was typed first (tools JSON syntax and the harness schema); an
invalid edit shows its error and changes nothing. A valid one becomes ``session.edit_harness(...)``:
a new lineage node with origin ``manual``, used from the next step, and its diff is shown.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import ipywidgets as W

from fst_lab.harness import TOOL_DESC_PREFIX, Harness, HarnessError
from fst_lab.runs import read_jsonl
from fst_lab.ui import render
from fst_lab.ui.editor import TOOLS_JSON, build_edit, editor_texts
from fst_lab.ui.plots import progress_png

log = logging.getLogger(__name__)

MEMORY_SOURCE = "last evaluate() (in memory)"
COMPONENT_LABELS = {"system_prompt": "system prompt", "task_template": "task template",
                    "few_shot": "few-shot (YAML: a list of conversations)"}


class Dashboard:
    """ipywidgets dashboard for one :class:`~fst_lab.session.Session`.

    Attributes tests and notebooks drive: ``fast_button``, ``slow_button`` + ``slow_n``, ``run_button``
    + ``run_cycles``, ``eval_button``, ``pause_button``, ``stop_button``; ``wait()`` joins the worker;
    ``editor_boxes`` (component -> Textarea), ``tools_json``, ``apply_button``, ``editor_message``,
    ``diff_view``; ``plot`` (an Image of PNG bytes, redrawn ``plot_version`` times); ``last_error``.
    """

    def __init__(self, session, *, min_plot_interval: float = 1.0, status_interval: float = 1.0):
        self.session = session
        self.min_plot_interval = min_plot_interval
        self.status_interval = status_interval
        self.last_error: str | None = None
        self.plot_version = 0
        self._activity = ""
        self._worker: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self._stop_flag = threading.Event()
        self._plot_lock = threading.Lock()
        self._last_plot = 0.0
        self._plot_timer: threading.Timer | None = None
        self._editor_harness: Harness | None = None
        self._quiet = False  # set while options are refreshed programmatically (no observer reactions)
        self._build()
        session.listeners.append(self._on_record)
        self._sync_buttons()
        self.refresh()

    # ================================================================== widgets
    def _build(self) -> None:
        btn = dict(layout=W.Layout(width="auto"))
        self.fast_button = W.Button(description="Fast step", icon="bolt", tooltip="One GEPA round", **btn)
        self.slow_button = W.Button(description="Slow step (n)", icon="cogs", tooltip="n RL steps", **btn)
        self.slow_n = W.IntText(value=1, description="n", layout=W.Layout(width="110px"),
                                style={"description_width": "16px"})
        self.run_button = W.Button(description="Run cycles", icon="play", tooltip="session.run(cycles)", **btn)
        self.run_cycles = W.IntText(value=1, description="cycles", layout=W.Layout(width="140px"),
                                    style={"description_width": "44px"})
        self.eval_button = W.Button(description="Evaluate", icon="check", tooltip="mean@k on validation", **btn)
        self.pause_button = W.Button(description="Pause", icon="pause", disabled=True, **btn)
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger", disabled=True, **btn)
        self.fast_button.on_click(lambda _: self.start_fast())
        self.slow_button.on_click(lambda _: self.start_slow(self.slow_n.value))
        self.run_button.on_click(lambda _: self.start_run(self.run_cycles.value))
        self.eval_button.on_click(lambda _: self.start_evaluate())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.stop_button.on_click(lambda _: self.stop())
        self._work_buttons = [self.fast_button, self.slow_button, self.run_button, self.eval_button]
        mode = getattr(getattr(self.session, "config", None), "mode", "fst")
        if mode == "rl":
            self.fast_button.tooltip = "mode 'rl' keeps the seed harness: no fast steps"
        if mode == "gepa":
            self.slow_button.tooltip = "mode 'gepa' freezes the weights: no slow steps"

        self.status = W.HTML()
        self.error = W.HTML()
        self.plot = W.Image(format="png", layout=W.Layout(max_width="820px"))
        self.population_view = W.HTML()
        self.lineage_view = W.HTML()

        # rollout browser
        self.rollout_source = W.Dropdown(description="source", layout=W.Layout(width="360px"))
        self.rollout_pick = W.Dropdown(description="trajectory", layout=W.Layout(width="520px"))
        self.rollout_view = W.HTML()
        self.rollout_source.observe(self._on_rollout_source, names="value")
        self.rollout_pick.observe(self._on_rollout_pick, names="value")
        self._rollouts: list[dict] = []
        self._loaded_source: str | None = None

        # harness editor
        self.editor_target = W.Dropdown(description="harness", layout=W.Layout(width="520px"))
        self.editor_target.observe(self._on_editor_target, names="value")
        self.editor_boxes: dict[str, W.Textarea] = {}
        self.tools_json = W.Textarea(layout=W.Layout(width="98%", height="180px"))
        self.tools_json.add_class("fst-mono")
        self.apply_button = W.Button(description="Apply", icon="check", button_style="primary", **btn)
        self.revert_button = W.Button(description="Revert", icon="undo", tooltip="reload the harness's texts", **btn)
        self.apply_button.on_click(lambda _: self.apply_edit())
        self.revert_button.on_click(lambda _: self.load_editor(self._editor_harness))
        self.editor_message = W.HTML()
        self.diff_view = W.HTML()
        self._editor_fields = W.VBox()

        controls = W.HBox([self.fast_button, self.slow_button, self.slow_n, self.run_button, self.run_cycles,
                           self.eval_button, self.pause_button, self.stop_button],
                          layout=W.Layout(flex_flow="row wrap", align_items="center"))
        progress = W.VBox([self.plot, W.HTML("<b>Population</b>"), self.population_view])
        rollouts = W.VBox([W.HBox([self.rollout_source, self.rollout_pick]), self.rollout_view])
        editor = W.VBox([self.editor_target, self._editor_fields,
                         W.HTML("<b>tools</b> (the whole list, OpenAI function-calling JSON)"), self.tools_json,
                         W.HBox([self.apply_button, self.revert_button]), self.editor_message, self.diff_view])
        self.tabs = W.Tab(children=[progress, rollouts, editor, self.lineage_view])
        for i, t in enumerate(["Progress", "Rollouts", "Harness editor", "Lineage"]):
            self.tabs.set_title(i, t)
        title = W.HTML(render.STYLE + f"<b>FST dashboard</b> · <code>{render.esc(self.session.run_dir)}</code>")
        self.widget = W.VBox([title, controls, self.status, self.error, self.tabs])
        self.widget.add_class("fst-dashboard")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ================================================================== work in the background
    @property
    def busy(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Join the worker (True when no work is left running)."""
        w = self._worker
        if w is not None:
            w.join(timeout)
        return not self.busy

    def start_fast(self) -> bool:
        return self._start("fast step (GEPA round)", lambda: self.session.fast_step())

    def start_slow(self, n: int = 1) -> bool:
        n = int(n)
        if n < 1:
            self._show_error(f"n must be at least 1, got {n}")
            return False

        def work():
            for i in range(n):
                if not self._wait_unpaused():
                    break
                self._activity = f"slow step {i + 1}/{n}"
                self.refresh_status()
                self.session.slow_step(1)

        return self._start(f"slow step 1/{n}", work)

    def start_run(self, cycles: int = 1) -> bool:
        cycles = int(cycles)
        if cycles < 1:
            self._show_error(f"cycles must be at least 1, got {cycles}")
            return False
        return self._start(f"run {cycles} cycle(s)", lambda: self.session.run(cycles))

    def start_evaluate(self) -> bool:
        def work():
            self.session.evaluate()
            self.refresh_rollout_sources(select=MEMORY_SOURCE)

        return self._start("evaluate", work)

    def toggle_pause(self) -> None:
        if self.session.paused:
            self.session.resume_work()
        else:
            self.session.pause()
        self._sync_buttons()
        self.refresh_status()

    def stop(self) -> None:
        """Stop at the next step boundary (the current step finishes)."""
        self._stop_flag.set()
        self.session.request_stop()
        self.refresh_status()

    def _start(self, activity: str, work: Callable[[], Any]) -> bool:
        if self.busy:
            self._show_error(f"busy ({self._activity}); wait for it or press Stop")
            return False
        self._clear_stop()
        self.last_error = None
        self.error.value = ""
        self._activity = activity
        self._done.clear()
        self._sync_buttons()

        def target():
            try:
                work()
            except Exception as e:  # shown in the dashboard; the notebook keeps running
                self.last_error = f"{type(e).__name__}: {e}"
                tb = traceback.format_exc(limit=-3)
                log.warning("dashboard worker failed: %s", tb)
                self.error.value = render.error_html(f"{activity} failed: {self.last_error}\n\n{tb}")
            finally:
                if self.session.paused:
                    self.session.resume_work()  # a pause ends with the work it paused
                self._activity = "stopped" if self._stop_flag.is_set() else "idle"
                self._done.set()
                self._sync_buttons()
                self.refresh()

        def ticker():  # keeps "elapsed" moving while a long step runs
            while not self._done.wait(self.status_interval):
                self.refresh_status()

        self._worker = threading.Thread(target=target, name="fst-dashboard-worker", daemon=True)
        self._worker.start()
        threading.Thread(target=ticker, name="fst-dashboard-ticker", daemon=True).start()
        self.refresh_status()
        return True

    def _wait_unpaused(self) -> bool:
        """Between the dashboard's own steps: hold while paused; False once Stop was pressed."""
        while self.session.paused and not self._stop_flag.is_set():
            time.sleep(0.1)
        return not self._stop_flag.is_set()

    def _clear_stop(self) -> None:
        self._stop_flag.clear()
        clear = getattr(self.session, "clear_stop", None)
        if clear is not None:
            clear()

    def _sync_buttons(self) -> None:
        busy = self.busy
        mode = getattr(getattr(self.session, "config", None), "mode", "fst")
        for b in self._work_buttons:
            b.disabled = busy
        if not busy:
            self.fast_button.disabled = mode == "rl"
            self.slow_button.disabled = mode == "gepa"
        self.pause_button.disabled = not busy
        self.stop_button.disabled = not busy
        paused = bool(getattr(self.session, "paused", False))
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"

    def _show_error(self, message: str) -> None:
        self.last_error = message
        self.error.value = render.error_html(message)

    # ================================================================== live updates
    def _on_record(self, rec: dict) -> None:
        """Session listener (runs on whichever thread stepped the session)."""
        self.refresh_status()
        if "kind" in rec:
            self.request_plot()
            self.refresh_rollout_sources()
        if rec.get("kind") == "fast" or rec.get("event") in ("edit", "stage", "resume") or rec.get("kind") == "eval":
            self.refresh_population()

    def refresh(self) -> None:
        """Redraw everything now (the worker calls it when it finishes)."""
        self.refresh_status()
        self.draw_plot()
        self.refresh_population()
        self.refresh_rollout_sources()

    def refresh_status(self) -> None:
        try:
            st = self.session.status()
        except Exception as e:  # a half-updated session mid-step; the next tick will do
            log.debug("status unavailable: %s", e)
            return
        self.status.value = render.status_html(st, self._activity, busy=self.busy)

    def request_plot(self) -> None:
        """Redraw now, or once the throttle interval has passed (never drops the last update)."""
        with self._plot_lock:
            wait = self.min_plot_interval - (time.time() - self._last_plot)
            if wait > 0:
                if self._plot_timer is None:
                    self._plot_timer = threading.Timer(wait, self._timer_fire)
                    self._plot_timer.daemon = True
                    self._plot_timer.start()
                return
        self.draw_plot()

    def _timer_fire(self) -> None:
        with self._plot_lock:
            self._plot_timer = None
        self.draw_plot()

    def draw_plot(self) -> None:
        s = self.session
        try:
            pop = list(s.population)
            scores = {h.id: s.population_scores.get(h.id) for h in pop}
            origins = {h.id: h.lineage.origin for h in s.harnesses.values()} if hasattr(s, "harnesses") else {}
            png = progress_png(list(s.metrics), scores, origins)
        except Exception as e:
            log.warning("plot failed: %s", e)
            return
        with self._plot_lock:
            self._last_plot = time.time()
            self.plot.value = png
            self.plot_version += 1

    def refresh_population(self) -> None:
        s = self.session
        try:
            lineage = s.lineage()
            pop = [h.id for h in s.population]
            best = s.best_harness().id
        except Exception as e:
            log.debug("population unavailable: %s", e)
            return
        self.population_view.value = render.population_html(lineage, pop, best)
        self.lineage_view.value = render.lineage_html(lineage)
        self._refresh_editor_targets()

    # ================================================================== rollout browser
    def _rollout_files(self) -> list[Path]:
        d = Path(self.session.run_dir) / "rollouts"
        return sorted(d.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True) if d.exists() else []

    def refresh_rollout_sources(self, select: str | None = None) -> None:
        """Offer the latest sources; reload the shown one only if it changed (or ``select`` asks to)."""
        opts = ([MEMORY_SOURCE] if getattr(self.session, "last_trajectories", None) else [])
        opts += [p.name for p in self._rollout_files()]
        current = self.rollout_source.value
        target = select if select in opts else current if current in opts else (opts[0] if opts else None)
        self._quiet = True
        try:
            if list(self.rollout_source.options) != opts:
                self.rollout_source.options = opts
            if self.rollout_source.value != target:
                self.rollout_source.value = target
        finally:
            self._quiet = False
        if target != self._loaded_source or select is not None:
            self._load_rollouts(target)
        if not opts:
            self.rollout_view.value = "<i>no rollouts yet: take a step or evaluate</i>"

    def _on_rollout_source(self, change) -> None:
        if not self._quiet:
            self._load_rollouts(change["new"])

    def _load_rollouts(self, source: str | None) -> None:
        if source is None:
            trajs = []
        elif source == MEMORY_SOURCE:
            trajs = [render.trajectory_dict(t) for t in (self.session.last_trajectories or [])]
        else:
            trajs = read_jsonl(Path(self.session.run_dir) / "rollouts" / source)
        self._rollouts = trajs
        self._loaded_source = source
        self.rollout_pick.options = [(render.trajectory_label(t, i), i) for i, t in enumerate(trajs)]
        self.rollout_pick.value = 0 if trajs else None
        self._on_rollout_pick({"new": self.rollout_pick.value})

    def _on_rollout_pick(self, change) -> None:
        i = change["new"]
        if i is None or i >= len(self._rollouts):
            self.rollout_view.value = "<i>no trajectory selected</i>"
            return
        self.rollout_view.value = render.trajectory_html(self._rollouts[i])

    # ================================================================== harness editor
    def _target_label(self, i: int | None, h: Harness) -> str:
        score = self.session.population_scores.get(h.id)
        where = f"#{i}" if i is not None else "(no longer in the population)"
        return (f"{where} {h.name} @{h.id} · {h.lineage.origin} r{h.lineage.round}"
                + (f" · score {score:.3f}" if isinstance(score, (int, float)) else ""))

    def _refresh_editor_targets(self) -> None:
        pop = list(self.session.population)
        opts = [(self._target_label(i, h), h.id) for i, h in enumerate(pop)]
        loaded = self._editor_harness
        if loaded is not None and loaded.id not in [h.id for h in pop]:
            opts.append((self._target_label(None, loaded), loaded.id))
        if list(self.editor_target.options) == opts:
            return
        self._quiet = True
        try:
            self.editor_target.options = opts
            self.editor_target.value = loaded.id if loaded is not None else (opts[0][1] if opts else None)
        finally:
            self._quiet = False
        if loaded is None and pop:
            self.load_editor(pop[0])

    def _on_editor_target(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        h = self.session.harnesses.get(change["new"]) if hasattr(self.session, "harnesses") else None
        h = h or next((x for x in self.session.population if x.id == change["new"]), None)
        if h is not None:
            self.load_editor(h)

    def load_editor(self, harness: Harness | None) -> None:
        """Fill the editor with ``harness``'s texts (discarding unsaved edits)."""
        if harness is None:
            return
        self._editor_harness = harness
        texts = editor_texts(harness)
        boxes = {}
        rows = []
        for comp in harness.components():
            box = self.editor_boxes.get(comp) or W.Textarea(layout=W.Layout(width="98%"))
            box.add_class("fst-mono")
            box.value = texts[comp]
            lines = texts[comp].count("\n") + 2
            box.layout.height = f"{min(max(lines, 3), 16) * 18 + 10}px"
            boxes[comp] = box
            label = COMPONENT_LABELS.get(comp) or f"description of tool <code>{render.esc(comp[len(TOOL_DESC_PREFIX):])}</code>"
            evolvable = " (evolvable)" if comp in harness.evolvable else " (fixed: GEPA leaves it alone)"
            rows += [W.HTML(f"<b>{label}</b><span style='color:#888'>{evolvable}</span>"), box]
        self.editor_boxes = boxes
        self._editor_fields.children = rows
        self.tools_json.value = texts[TOOLS_JSON]
        if self.editor_target.value != harness.id and harness.id in [v for _, v in self.editor_target.options]:
            self._quiet = True
            try:
                self.editor_target.value = harness.id
            finally:
                self._quiet = False

    def editor_values(self) -> dict[str, str]:
        texts = {comp: box.value for comp, box in self.editor_boxes.items()}
        texts[TOOLS_JSON] = self.tools_json.value
        return texts

    def apply_edit(self, note: str = "dashboard edit") -> Harness | None:
        """Validate the editor's texts and hand them to ``session.edit_harness`` (returns the new harness).

        While a step runs, the edit is applied by a helper thread at the next step boundary (the
        session holds its lock during a step); the result shows up in the editor when it lands.
        """
        old = self._editor_harness
        if old is None:
            self.editor_message.value = render.error_html("no harness loaded")
            return None
        if old.id not in [h.id for h in self.session.population]:
            self.editor_message.value = render.error_html(
                f"{old.id} is no longer in the population (a fast step replaced it): pick a target again")
            return None
        try:
            edit = build_edit(old, self.editor_values())
        except HarnessError as e:
            self.editor_message.value = render.error_html(f"not applied — {e}")
            self.diff_view.value = ""
            return None
        if edit is None:
            self.editor_message.value = render.ok_html("nothing changed")
            return None
        if self.busy:
            self.editor_message.value = render.ok_html("valid; applying at the next step boundary…")
            threading.Thread(target=self._apply, args=(old, edit, note), daemon=True,
                             name="fst-dashboard-edit").start()
            return None
        return self._apply(old, edit, note)

    def _apply(self, old: Harness, edit, note: str) -> Harness | None:
        try:
            new = self.session.edit_harness(old.id, edit, note=note)
        except (HarnessError, KeyError, IndexError, ValueError) as e:
            self.editor_message.value = render.error_html(f"not applied — {e}")
            return None
        self.diff_view.value = render.diff_html(old.diff(new))
        self.editor_message.value = render.ok_html(
            f"applied: new harness {new.id} (origin manual, parent {old.id}); the next step uses it")
        self.load_editor(new)
        self.refresh_population()
        self.draw_plot()
        return new

    # ================================================================== teardown
    def close(self) -> None:
        """Detach from the session and close the widgets (any running step finishes on its own)."""
        try:
            self.session.listeners.remove(self._on_record)
        except ValueError:
            pass
        if self._plot_timer is not None:
            self._plot_timer.cancel()
        self.widget.close()
