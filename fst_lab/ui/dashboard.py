"""The notebook face of a Session: buttons, live progress and plots, population, rollouts, a harness editor.

    >>> from fst_lab.ui import Dashboard
    >>> dash = Dashboard(session)     # the last expression of a cell renders it
    >>> dash.slow_button.click(); dash.wait()      # the same as clicking in JupyterLab
    >>> dash.snapshot()               # static HTML + PNG of its current state (kept in a saved notebook)

Buttons start work on :class:`fst_lab.runner.Runner` (the same runner the app uses), so the
notebook stays responsive. What the dashboard shows is the *session's* state, whoever started the
work — a button, a notebook cell calling ``session.slow_step()``, another face: busy/paused/idle,
what it is doing, and progress by phase (rollouts i/N, GEPA metric calls i/budget with proposals
accepted, RL step i/n with reward). Buttons are enabled only when they can act. Listener callbacks
arrive on the worker thread; they only assign widget values, which is safe from any thread.

A saved notebook has no kernel to draw widgets: the dashboard's output also carries a static
``text/html`` rendering, and :meth:`Dashboard.snapshot` displays the current state as plain HTML.
"""

from __future__ import annotations

import base64
import logging
import threading
import time

import ipywidgets as W

from fst_lab import records
from fst_lab.runner import Runner
from fst_lab.ui import render
from fst_lab.ui.panels import MEMORY_SOURCE, HarnessEditor, RolloutBrowser
from fst_lab.ui.plots import progress_png

log = logging.getLogger(__name__)

__all__ = ["Dashboard", "MEMORY_SOURCE"]


class Dashboard:
    """ipywidgets dashboard for one :class:`~fst_lab.session.Session`.

    Attributes tests and notebooks drive: ``fast_button``, ``slow_button`` + ``slow_n``, ``run_button``
    + ``run_cycles``, ``eval_button``, ``consolidate_button``, ``pause_button``, ``stop_button``;
    ``wait()`` joins the worker;
    ``runner`` (the shared :class:`Runner`); ``status`` (HTML); ``editor_boxes``, ``tools_json``,
    ``apply_button``, ``editor_message``, ``diff_view``; ``plot`` (PNG bytes, redrawn ``plot_version``
    times); ``last_error``.
    """

    def __init__(self, session, *, min_plot_interval: float = 1.0, status_interval: float = 0.5):
        self.session = session
        self.min_plot_interval = min_plot_interval
        self.status_interval = status_interval
        self.plot_version = 0
        self._plot_lock = threading.Lock()
        self._last_plot = 0.0
        self._plot_timer: threading.Timer | None = None
        self._closed = threading.Event()
        self._shown: tuple | None = None  # the last (state, status) drawn, to skip identical redraws
        self.runner = Runner(session, name="fst-dashboard-worker")
        self.rollouts = RolloutBrowser(session)
        self.editor = HarnessEditor(session, busy=lambda: self.busy, on_applied=self._after_edit)
        self._build()
        self.runner.subscribe(self._on_event)
        self.refresh()
        # The session can get busy without us (a notebook cell stepping it): watch it.
        threading.Thread(target=self._watch, name="fst-dashboard-watch", daemon=True).start()

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
        self.consolidate_button = W.Button(description="Consolidate", icon="compress", **btn,
                                           tooltip="one consolidation step: distil the evolved harness into "
                                                   "the weights")
        self.pause_button = W.Button(description="Pause", icon="pause", disabled=True, **btn)
        # Stop is red only while there is something to stop (a disabled danger button still looks armed)
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True, **btn)
        self.fast_button.on_click(lambda _: self.start_fast())
        self.slow_button.on_click(lambda _: self.start_slow(self.slow_n.value))
        self.run_button.on_click(lambda _: self.start_run(self.run_cycles.value))
        self.eval_button.on_click(lambda _: self.start_evaluate())
        self.consolidate_button.on_click(lambda _: self.start_consolidate())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.stop_button.on_click(lambda _: self.stop())
        self._work_buttons = [self.fast_button, self.slow_button, self.run_button, self.eval_button,
                              self.consolidate_button]
        mode = self.session.config.mode
        if mode == "rl":
            self.fast_button.tooltip = "mode 'rl' keeps the seed harness: no fast steps"
        if mode == "gepa":
            self.slow_button.tooltip = "mode 'gepa' freezes the weights: no slow steps"

        self.status = W.HTML()
        self.error = W.HTML()
        self.plot = W.Image(format="png", layout=W.Layout(max_width="900px"))
        self.population_view = W.HTML()
        self.lineage_view = W.HTML()
        controls = W.HBox([self.fast_button, self.slow_button, self.slow_n, self.run_button, self.run_cycles,
                           self.eval_button, self.consolidate_button, self.pause_button, self.stop_button],
                          layout=W.Layout(flex_flow="row wrap", align_items="center"))
        progress = W.VBox([self.plot, W.HTML("<b>Population</b>"), self.population_view])
        self.tabs = W.Tab(children=[progress, self.rollouts.widget, self.editor.widget, self.lineage_view])
        for i, t in enumerate(["Progress", "Rollouts", "Harness editor", "Lineage"]):
            self.tabs.set_title(i, t)
        title = W.HTML(render.STYLE + f"<b>FST dashboard</b> · <code>{render.esc(self.session.run_dir)}</code>")
        self.widget = W.VBox([title, controls, self.status, self.error, self.tabs])
        self.widget.add_class("fst-dashboard")

    # panels' widgets under the names notebooks and tests use
    editor_boxes = property(lambda self: self.editor.boxes)
    tools_json = property(lambda self: self.editor.tools_json)
    apply_button = property(lambda self: self.editor.apply_button)
    revert_button = property(lambda self: self.editor.revert_button)
    editor_message = property(lambda self: self.editor.message)
    editor_target = property(lambda self: self.editor.target)
    diff_view = property(lambda self: self.editor.diff_view)
    rollout_source = property(lambda self: self.rollouts.source)
    rollout_pick = property(lambda self: self.rollouts.pick)
    rollout_view = property(lambda self: self.rollouts.view)

    def load_editor(self, harness) -> None:
        self.editor.load(harness)

    def editor_values(self) -> dict[str, str]:
        return self.editor.values()

    def apply_edit(self, note: str = "dashboard edit"):
        return self.editor.apply(note)

    def refresh_rollout_sources(self, select: str | None = None) -> None:
        self.rollouts.refresh(select)

    # ================================================================== display (live and saved)
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        # Without a kernel (a saved notebook, nbconvert, GitHub) the widget can't be drawn: keep a static copy.
        data["text/html"] = self.static_html()
        data["text/plain"] = f"FST dashboard · {self.session.run_dir} · {render.state_line(self.runner.state())}"
        return bundle

    def display(self) -> None:
        from IPython.display import display

        display(self)

    def static_html(self) -> str:
        """The dashboard's current state as self-contained HTML: status, the plots as a PNG, population."""
        png = self.plot.value or b""
        img = (f"<img alt='FST dashboard plots' style='max-width:900px' "
               f"src='data:image/png;base64,{base64.b64encode(png).decode()}'/>") if png else ""
        return (f"<div class='fst-dashboard-snapshot'>{render.STYLE}<b>FST dashboard</b> (static snapshot) · "
                f"<code>{render.esc(self.session.run_dir)}</code>{self.status.value}{img}"
                f"<div><b>Population</b></div>{self.population_view.value}</div>")

    def snapshot(self):
        """An object a notebook cell displays as the dashboard's current state in static HTML (it stays
        readable in the saved notebook, without a kernel)."""
        from IPython.display import HTML

        self.draw_plot()
        self.refresh_status(force=True)
        return HTML(self.static_html())

    # ================================================================== work in the background
    @property
    def busy(self) -> bool:
        return self.runner.busy

    @property
    def last_error(self) -> str | None:
        return self.runner.last_error

    def wait(self, timeout: float | None = None) -> bool:
        """Join the worker (True when no work it started is left running)."""
        done = self.runner.wait(timeout)
        self.refresh()
        return done

    def _start(self, label: str, work) -> bool:
        self.error.value = ""
        if not self.runner.start(label, work):
            self._show_error(self.runner.message)
            return False
        self.sync()
        return True

    def start_fast(self) -> bool:
        return self._start("fast step", lambda s: s.fast_step())

    def start_slow(self, n: int = 1) -> bool:
        n = int(n)
        if n < 1:
            self._show_error(f"n must be at least 1, got {n}")
            return False
        return self._start(f"{n} slow step(s)", lambda s: s.slow_step(n))

    def start_run(self, cycles: int = 1) -> bool:
        cycles = int(cycles)
        if cycles < 1:
            self._show_error(f"cycles must be at least 1, got {cycles}")
            return False
        return self._start(f"run {cycles} cycle(s)", lambda s: s.run(cycles))

    def start_evaluate(self) -> bool:
        def work(s):
            s.evaluate()
            self.rollouts.refresh(select=MEMORY_SOURCE)

        return self._start("evaluate", work)

    def start_consolidate(self, n: int = 1) -> bool:
        return self._start(f"{n} consolidation step(s)", lambda s: s.consolidate(n))

    def toggle_pause(self) -> None:
        self.runner.toggle_pause()
        self.sync()

    def stop(self) -> None:
        """Stop at the next step boundary (the current step finishes)."""
        self.runner.stop()
        self.sync()

    def _show_error(self, message: str) -> None:
        self.error.value = render.error_html(message)

    # ================================================================== live updates
    def _on_event(self, rec: dict) -> None:
        """Every record, progress event and runner change (on whichever thread produced it)."""
        self.sync()
        if rec.get("event") == "runner" and rec.get("state") == "finished":
            if rec.get("error"):
                self._show_error(f"{rec['error']}\n\n{self.runner.last_traceback or ''}")
            self.refresh()
            return
        if "kind" in rec:
            self.request_plot()
            self.rollouts.refresh()
        if rec.get("kind") in (records.FAST, records.EVAL) or rec.get("event") in ("edit", "stage", "resume"):
            self.refresh_population()

    def _watch(self) -> None:
        """Keep status and buttons true while anything runs (elapsed time, work started elsewhere)."""
        while not self._closed.wait(self.status_interval):
            if self.session.busy or self._shown is None or self._shown[0]["busy"]:
                self.sync()

    def sync(self) -> None:
        """Status line and buttons from the runner's state (the session's truth)."""
        st = self.runner.state()
        busy, paused = st["busy"], st["paused"]
        mode = self.session.config.mode
        for b in self._work_buttons:
            b.disabled = busy
        if not busy:
            self.fast_button.disabled = mode == "rl"
            self.slow_button.disabled = self.consolidate_button.disabled = mode == "gepa"
        self.pause_button.disabled = not busy
        self.stop_button.disabled = not busy
        self.stop_button.button_style = "danger" if busy else ""
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        self.refresh_status(state=st)

    def refresh(self) -> None:
        """Redraw everything now."""
        self.sync()
        self.draw_plot()
        self.refresh_population()
        self.rollouts.refresh()

    def refresh_status(self, state: dict | None = None, force: bool = False) -> None:
        try:
            st = self.session.status()
        except Exception as e:  # a half-updated session mid-step; the next tick will do
            log.debug("status unavailable: %s", e)
            return
        state = state or self.runner.state()
        metrics = self.session.metrics
        html = render.status_html(st, state, last_eval=records.latest(metrics, records.EVAL, "reward"),
                                  last_step=records.latest(metrics, records.SLOW, "reward"))
        if force or self.status.value != html:
            self.status.value = html
        self._shown = (state, html)

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
            scores = {h.id: s.population_scores.get(h.id) for h in s.population}
            origins = {h.id: h.lineage.origin for h in s.harnesses.values()}
            png = progress_png(list(s.metrics), scores, origins, mode=s.config.mode)
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
            best = render.best_scored(pop, s.population_scores)
        except Exception as e:
            log.debug("population unavailable: %s", e)
            return
        self.population_view.value = render.population_html(lineage, pop, best, mode=s.config.mode)
        self.lineage_view.value = render.lineage_html(lineage)
        self.editor.refresh_targets()

    def _after_edit(self) -> None:
        self.refresh_population()
        self.draw_plot()

    # ================================================================== teardown
    def close(self) -> None:
        """Detach from the session and close the widgets (any running step finishes on its own)."""
        self._closed.set()
        self.runner.detach()
        if self._plot_timer is not None:
            self._plot_timer.cancel()
        self.widget.close()
