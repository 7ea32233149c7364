"""The fst_lab app (Gradio): compare harnesses side by side, see how they evolved, train a live session.

    python app.py [--runs-root runs] [--port 7860]      # or: make app / fst-lab app

One module per tab, plus what they share:

- :mod:`fst_lab.app.layout` — the page: run picker (opens on the newest run and its result line),
  harness pair, the three tabs; :func:`build_app`;
- :mod:`fst_lab.app.arena` — Arena: one input, two harnesses, answers streamed with tool calls;
- :mod:`fst_lab.app.evolution` — Evolution: diff, lineage, reward and KL curves, the run's config;
- :mod:`fst_lab.app.train` — Train: start / step / run / pause / stop a Session on the shared
  :class:`fst_lab.runner.Runner`, with progress by phase; hand edits;
- :mod:`fst_lab.app.catalog` — what may be read (runs inside the root, harness files, tasks) and
  redaction; :mod:`fst_lab.app.weights` — base and trained policies for the arena.

Plots and HTML come from :mod:`fst_lab.ui.plots` and :mod:`fst_lab.ui.render`, shared with the
notebook dashboard and ``fst-lab compare``.
"""

from fst_lab.app.layout import build_app

__all__ = ["build_app"]
