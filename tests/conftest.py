"""Shared fixtures. The embedded model is loaded once per session; unit tests use tiny random models.

Opt-in flags (DSPy style): ``--gpu`` runs CUDA-only tests, ``--llm-call`` runs tests that call a live
frontier API. Both are skipped by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", default=False, help="run tests that need a CUDA GPU")
    parser.addoption("--llm-call", action="store_true", default=False, help="run tests that call live LLM APIs")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run with --gpu on a CUDA machine)")
    skip_llm = pytest.mark.skip(reason="calls a live LLM API (opt in with --llm-call)")
    for item in items:
        if "gpu" in item.keywords and not (config.getoption("--gpu") and torch.cuda.is_available()):
            item.add_marker(skip_gpu)
        if "llm_call" in item.keywords and not config.getoption("--llm-call"):
            item.add_marker(skip_llm)


@pytest.fixture(scope="session")
def embedded_policy():
    """The real embedded SmolLM2-135M-Instruct (converted once into the cache dir)."""
    from fst_lab.models import load_policy

    return load_policy()


@pytest.fixture
def tiny_policy():
    """A tiny random-init Llama with the embedded tokenizer: fast, for plumbing tests."""
    from fst_lab.models import tiny_policy as make

    return make(seed=0)


@pytest.fixture
def artifacts_dir():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def harness_dir():
    return REPO / "harnesses"


def _child_pids() -> set[int]:
    """PIDs whose parent is this test process (via /proc; Linux only)."""
    me, kids = os.getpid(), set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                kids.add(int(pid))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return kids


@pytest.fixture
def child_pids():
    """Call it for the set of this test process's child PIDs (to check a sandbox left none behind)."""
    return _child_pids
