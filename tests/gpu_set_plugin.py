"""pytest plugin for ``make test-gpu-set``: the suite under requirements-gpu.txt's libraries, on a CPU.

    PYTHONPATH=.venv/gpuset-site .venv/bin/python -m pytest -p tests.gpu_set_plugin

TRL 1.15 (the newest TRL Unsloth accepts) has GRPOTrainer patch the model with its Triton fused LM
head (``add_fused_lm_head`` -> ``_ChunkedLogProbFunction`` in ``trl/trainer/utils.py``); on a
machine without a CUDA driver every training step then fails ("'NoneType' object has no attribute
'apply'" without Triton, "0 active drivers" with it). TRL 1.16, the CPU pin, runs on CPU. So under
the GPU set on a CPU, any test that builds a GRPOTrainer is *skipped* with that reason (the slow loop
under the GPU set is checked by ``gpu/check.sh`` on a GPU), and everything else runs:

- in-process, on any thread: ``trl.trainer.utils._ChunkedLogProbFunction`` (the name TRL looks up at
  the first training forward; ``None`` without Triton) is replaced by a stub that records the hit and
  raises with the reason. A test that fails (in setup or call) *after* that point is reported as
  skipped; one that passes stays passed. So a test is skipped exactly when it reached the fused head,
  whichever module it lives in and whichever thread trained (the app's runner, the dashboard). A later
  failure in a module where a test reached it is skipped too: module-scoped fixtures (a session, a
  dashboard) carry the failed trainer into the tests after it;
- in a child process (the stub can't reach there): the tests listed in :data:`CHILD_PROCESS_SLOW`;
- tests that are wrong by construction under the overlay: :data:`NOT_UNDER_OVERLAY`.

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
    "tests/test_gpu_check.py::test_cpu_branch",
)
# Tests whose premise the overlay breaks on purpose (node id prefix -> why).
NOT_UNDER_OVERLAY = {
    "tests/test_supply_chain.py::test_environment_is_consistent":
        "the overlay replaces the CPU pins (transformers/trl/datasets) on purpose",
    "tests/test_llm_faults.py::test_zz_report_fault_counts":
        "it tallies the module's fault-injection tests, some of which train and skip here",
}
_HITS: list[str] = []  # one entry per call of the stub (any thread)
_TAINTED: set[str] = set()  # test modules in which a test reached the stub


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


class SlowLoopNeedsCUDA(RuntimeError):
    """What the fused-head stub raises (an ordinary error, so the code under test handles it as it would
    any trainer failure, on whichever thread)."""


def pytest_configure(config):
    if not trl_needs_cuda():
        return
    import trl.trainer.utils as trl_utils

    reason = REASON.format(trl=importlib.metadata.version("trl"))

    class _FusedHeadStub:
        @staticmethod
        def apply(*args, **kwargs):
            _HITS.append(reason)
            raise SlowLoopNeedsCUDA(reason)

    trl_utils._ChunkedLogProbFunction = _FusedHeadStub
    config._fst_gpu_set_reason = reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        item._fst_hits0 = len(_HITS)  # hits before this test: only its own count
    outcome = yield
    rep = outcome.get_result()
    reason = getattr(item.config, "_fst_gpu_set_reason", None)
    if not reason:
        return
    module = str(item.path)
    own = len(_HITS) > getattr(item, "_fst_hits0", len(_HITS))
    if own:
        _TAINTED.add(module)
    if rep.failed and call.when in ("setup", "call"):
        # Its own hit; a failure carrying the stub's message (a module fixture's cached error); or a module
        # whose shared fixtures (a session, a dashboard) went through a failed trainer in an earlier test.
        why = reason if own or reason in str(rep.longrepr) else (
            reason + " [an earlier test of this module trained; its shared fixtures carry that failure]"
            if module in _TAINTED else None)
        if why:
            rep.outcome = "skipped"
            rep.longrepr = (module, (item.location[1] or 0) + 1, "Skipped: " + why)


def pytest_report_header(config):
    reason = getattr(config, "_fst_gpu_set_reason", None)
    libs = ", ".join(f"{n} {_version(n)}" for n in ("transformers", "trl", "datasets", "peft", "accelerate"))
    return f"fst_lab GPU library set on CPU: {libs}" + ("; slow-loop tests skip (TRL/Triton)" if reason else "")


def pytest_collection_modifyitems(config, items):
    reason = getattr(config, "_fst_gpu_set_reason", None)
    if not reason:
        return
    child = pytest.mark.skip(reason=reason + " [runs the slow loop in a child process]")
    for item in items:
        if item.nodeid.startswith(CHILD_PROCESS_SLOW):
            item.add_marker(child)
        for prefix, why in NOT_UNDER_OVERLAY.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.skip(reason=f"GPU library set on CPU: {why}"))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"
