"""Old home of the app's logic, kept so existing imports work: everything moved to :mod:`fst_lab.app`
(one module per tab) and :mod:`fst_lab.ui.render` / :mod:`fst_lab.ui.plots`. New code imports those."""

from fst_lab.app.arena import ArenaUpdate, chat_messages, harness_header, score_markdown, stream_arena  # noqa: F401
from fst_lab.app.catalog import (ARENA_EXAMPLES, FREE_TEXT, REDACTED, Catalog, TaskSpec, Unscored,  # noqa: F401
                                 config_yaml, cycle_choices, example_choices, find_example, free_text_example,
                                 get_task_cached, parse_cycle, redact, secret_fields, task_names, task_spec_for)
from fst_lab.app.train import TINY_CONFIG, Steering  # noqa: F401
from fst_lab.app.weights import PolicyCache  # noqa: F401
from fst_lab.ui.plots import curve_figures as _curve_figures
from fst_lab.ui.render import ORIGIN_MARK, diff_html, lineage_tree, run_summary  # noqa: F401


def curve_figures(run):
    """The app's two figures for a run (or None): see :func:`fst_lab.ui.plots.curve_figures`."""
    return _curve_figures(run.metrics if run is not None else [])
