"""pytest plugin for ``make test-gpu-set``: the suite under requirements-gpu.txt's libraries, on a CPU.

    PYTHONPATH=.venv/gpuset-site .venv/bin/python -m pytest -p tests.gpu_set_plugin

TRL 1.15 (the newest TRL Unsloth accepts) has GRPOTrainer patch the model with its Triton fused LM
head (``add_fused_lm_head`` -> ``_ChunkedLogProbFunction`` in ``trl/trainer/utils.py``); on a
machine without a CUDA driver every training step then fails ("'NoneType' object has no attribute
'apply'" without Triton, "0 active drivers" with it). TRL 1.16, the CPU pin, runs on CPU. So under
the GPU set on a CPU, any test that builds a GRPOTrainer is *skipped* with that reason (the slow loop
under the GPU set is checked by ``gpu/check.sh`` on a GPU), and everything else runs:

- in-process: ``GRPOTrainer.__init__`` raises ``pytest.skip`` (a BaseException, so no ``except
  Exception`` in the code under test swallows it): a test is skipped exactly when it reaches the
  slow loop, whichever module it lives in;
- in a child process (this patch can't reach there): the tests listed in :data:`CHILD_PROCESS_SLOW`.

Loaded only by ``make test-gpu-set``; with the CPU pins (TRL >= 1.16) or with CUDA it does nothing.
"""

from __future__ import annotations

import importlib.metadata

import pytest

REASON = ("GPU library set on CPU: TRL {trl}'s GRPOTrainer always patches in its Triton fused LM head "
          "(trl/trainer/utils.py, _ChunkedLogProbFunction), which needs a CUDA driver; the slow loop under "
          "this set runs on a GPU only (gpu/check.sh)")

# Tests that run the slow loop in a child process (node id prefixes).
CHILD_PROCESS_SLOW = (
    "tests/test_distributed.py",
    "tests/test_crash_safety.py::test_sigkill_at_many_points",
    "tests/test_notebooks.py",
    "tests/test_benchmarks_smoke.py",
)


def trl_needs_cuda() -> bool:
    """True for TRL < 1.16 on a machine without CUDA (the GPU set on a CPU)."""
    from packaging.version import Version

    try:
        trl = Version(importlib.metadata.version("trl"))
    except importlib.metadata.PackageNotFoundError:
        return False
    if trl >= Version("1.16"):
        return False
    import torch

    return not torch.cuda.is_available()


def pytest_configure(config):
    if not trl_needs_cuda():
        return
    from trl import GRPOTrainer

    reason = REASON.format(trl=importlib.metadata.version("trl"))

    def _skip_init(self, *args, **kwargs):
        pytest.skip(reason)

    GRPOTrainer.__init__ = _skip_init
    config._fst_gpu_set_reason = reason


def pytest_report_header(config):
    reason = getattr(config, "_fst_gpu_set_reason", None)
    libs = ", ".join(f"{n} {_version(n)}" for n in ("transformers", "trl", "datasets", "peft", "accelerate"))
    return f"fst_lab GPU library set on CPU: {libs}" + ("; slow-loop tests skip (TRL/Triton)" if reason else "")


def pytest_collection_modifyitems(config, items):
    reason = getattr(config, "_fst_gpu_set_reason", None)
    if not reason:
        return
    mark = pytest.mark.skip(reason=reason + " [runs the slow loop in a child process]")
    for item in items:
        if item.nodeid.startswith(CHILD_PROCESS_SLOW):
            item.add_marker(mark)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"
