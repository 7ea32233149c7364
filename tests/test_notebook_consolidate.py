"""notebooks/05_consolidate.ipynb runs headless at smoke size (nbclient) and what it publishes is asserted.

Same conventions as tests/test_notebooks.py: a cell injected after the ``parameters`` cell sets ``SMOKE``,
``RUNS_ROOT`` and ``RESULTS_PATH``; the notebook prints ``FST_RESULTS {...}`` and writes its ``RESULTS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

NB = Path(__file__).resolve().parent.parent / "notebooks" / "05_consolidate.ipynb"

pytestmark = pytest.mark.slow


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NB, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells)


def test_consolidation_notebook_runs_at_smoke_size(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NB, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    results = tmp_path / "results.json"
    cell = nbformat.v4.new_code_cell(f"SMOKE = True\nRUNS_ROOT = {str(tmp_path / 'runs')!r}\n"
                                     f"RESULTS_PATH = {str(results)!r}")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    assert "FST_RESULTS {" in text
    assert "FutureWarning" not in text and "DeprecationWarning" not in text
    res = json.loads(results.read_text())
    assert res["steps"] == 2 and res["consolidate_step"] == 2
    assert res["prompt_tokens"]["minimal"] < res["prompt_tokens"]["evolved"]
    assert res["kl_before"] > 0 and res["kl_after"] != res["kl_before"]  # the weights moved
    assert (Path(res["run_dir"]) / "metrics.jsonl").read_text().count('"kind": "consolidate"') == 2
