"""The notebook face of a Session (ipywidgets), and the plots and HTML every face shares.

    >>> from fst_lab.ui import Dashboard
    >>> Dashboard(session)        # buttons, live progress and plots, population + lineage, rollouts, editor

``fst_lab.ui.plots`` (PNG plots from metric records) and ``fst_lab.ui.render`` (HTML and text views)
are pure helpers used by the dashboard, the app, ``fst-lab compare`` and the benchmarks; they import
no widgets, so ``import fst_lab.ui.plots`` works without ipywidgets. ``fst_lab.ui.editor`` validates
hand edits.
"""

__all__ = ["Dashboard", "progress_figure", "progress_png"]


def __getattr__(name: str):  # lazy: the widget class pulls in ipywidgets, the plots don't need it
    if name == "Dashboard":
        from fst_lab.ui.dashboard import Dashboard

        return Dashboard
    if name in ("progress_figure", "progress_png"):
        from fst_lab.ui import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'fst_lab.ui' has no attribute {name!r}")
