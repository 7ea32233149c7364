"""Notebook widgets for a Session (ipywidgets). The app (``app.py``) is the other face.

    >>> from fst_lab.ui import Dashboard
    >>> Dashboard(session)        # buttons, live plots, population + lineage, rollouts, harness editor

``fst_lab.ui.plots`` and ``fst_lab.ui.render`` are pure helpers (PNG plots and HTML from metric
records, lineage rows and trajectories); ``fst_lab.ui.editor`` validates hand edits.
"""

from fst_lab.ui.dashboard import Dashboard
from fst_lab.ui.plots import progress_figure, progress_png

__all__ = ["Dashboard", "progress_figure", "progress_png"]
