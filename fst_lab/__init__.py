"""fst_lab: Learning, Fast and Slow.

Fast weights = an agent harness (system prompt, task template, few-shot, tools, loop settings) evolved
by GEPA through a LiteLLM reflection model. Slow weights = the policy's parameters, trained by
GRPO-family RL (CISPO by default) with TRL (Unsloth on GPU). A :class:`Session` interleaves them.

Heavy modules are imported lazily so ``import fst_lab`` (and the run-directory loaders) stay light.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Harness": "fst_lab.harness",
    "HarnessError": "fst_lab.harness",
    "FSTConfig": "fst_lab.config",
    "ConfigError": "fst_lab.config",
    "Session": "fst_lab.session",
    "load_policy": "fst_lab.models",
    "get_task": "fst_lab.tasks",
    "rollout": "fst_lab.rollout",
    "load_run": "fst_lab.runs",
    "list_runs": "fst_lab.runs",
    "RunDir": "fst_lab.rundir",
    "FstLabError": "fst_lab.errors",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fst_lab' has no attribute {name!r}")
