"""Every notebook runs headless with smoke parameters (nbclient), and what it publishes is asserted.

Parameters are injected papermill-style: a cell placed right after the one tagged ``parameters``
overrides ``SMOKE``, ``RUNS_ROOT`` and ``RESULTS_PATH``; each notebook ends by writing its
``RESULTS`` dict to ``RESULTS_PATH``. The committed notebooks must carry no outputs. Executed
notebooks must show no FutureWarning/DeprecationWarning, and once saved, the notebooks with a
dashboard must still show it as static HTML (no kernel needed).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p for p in NB_DIR.glob("0[1-4]_*.ipynb"))  # 05 (consolidation) has its own test file

pytestmark = pytest.mark.slow


def inject_parameters(nb, params: dict) -> None:
    """Insert a cell after the ``parameters``-tagged cell (papermill's 'injected-parameters')."""
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)


def outputs_text(nb) -> str:
    """Every output of every code cell as text (streams, errors, and each mime type's data)."""
    parts = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", [])))
            parts += [str(v) for v in (o.get("data") or {}).values()]
            parts += o.get("traceback", []) or []
    return "\n".join(parts)


def saved_dashboard_snapshots(saved: Path) -> list[str]:
    """text/html outputs of a saved notebook that render the dashboard statically (no kernel needed)."""
    nb = nbformat.read(saved, as_version=4)
    return [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "fst-dashboard-snapshot" in o["data"]["text/html"]]


def run_notebook(path: Path, tmp_path: Path, **extra) -> tuple[dict, float]:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    results = tmp_path / f"{path.stem}.results.json"
    inject_parameters(nb, {"SMOKE": True, "RUNS_ROOT": str(tmp_path / "runs"), "RESULTS_PATH": str(results),
                           **extra})
    t0 = time.time()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    seconds = time.time() - t0
    printed = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if o.get("name") == "stdout"]
    assert any("FST_RESULTS {" in t for t in printed), "the notebook did not print its FST_RESULTS line"
    # clean output: no library deprecation noise in what a user reads
    text = outputs_text(nb)
    assert "FutureWarning" not in text and "DeprecationWarning" not in text, \
        [line for line in text.splitlines() if "Warning" in line][:5]
    saved = tmp_path / f"{path.stem}.executed.ipynb"
    nbformat.write(nb, saved)
    return json.loads(results.read_text()) | {"_saved": str(saved)}, seconds


def test_all_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_edit_harness_midrun.ipynb",
                                           "03_fst_vs_rl.ipynb", "04_continual.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "SMOKE = False" in code[0].source and "RESULTS_PATH" in code[0].source
    for c in code:
        assert c.outputs == [] and c.execution_count is None, f"{path.name}: committed with outputs"
    # only the public API (no private attributes of the session reached into)
    for c in code:
        assert not re.search(r"\b(session|s|dash|run)\._", c.source), f"private attribute used: {c.source[:80]}"


def test_01_quickstart(tmp_path):
    r, secs = run_notebook(NB_DIR / "01_quickstart.ipynb", tmp_path)
    assert r["population"] and len(r["population"]) <= 2
    assert r["fast_rounds"] == 1 and r["rl_steps"] == 2  # one slow_step(T=1) + one dashboard click
    assert {"eval", "fast", "slow"} <= set(r["metric_kinds"])
    assert r["dashboard_error"] is None and r["dashboard_plot_bytes"] > 1000
    assert 0.0 <= r["reward_before"] <= 1.0 and 0.0 <= r["reward_after"] <= 1.0
    snaps = saved_dashboard_snapshots(Path(r["_saved"]))  # readable without a kernel
    assert snaps and "data:image/png;base64," in snaps[-1] and "RL step 2" in snaps[-1]
    print(f"01_quickstart smoke: {secs:.1f}s")


def test_02_edit_harness_midrun(tmp_path):
    r, secs = run_notebook(NB_DIR / "02_edit_harness_midrun.ipynb", tmp_path)
    assert len(r["manual_ids"]) >= 3  # from code, from the dashboard editor, from the YAML file on disk
    assert r["first_edit_id"] in r["manual_in_lineage_on_disk"]
    assert set(r["manual_ids"]) <= set(r["manual_in_lineage_on_disk"])
    assert "api" in r["edit_sources"] and any(str(s).endswith(".yaml") for s in r["edit_sources"])
    assert r["step_after_edit_used_manual"], r["step_after_edit_population"]
    assert r["lineage_size_after"] > r["lineage_size_before"]
    assert r["dashboard_error"] is None
    assert saved_dashboard_snapshots(Path(r["_saved"]))
    print(f"02_edit_harness_midrun smoke: {secs:.1f}s")


def test_03_fst_vs_rl(tmp_path):
    r, secs = run_notebook(NB_DIR / "03_fst_vs_rl.ipynb", tmp_path)
    assert r["modes"] == ["fst", "rl", "gepa"]
    assert r["rl_steps"]["gepa"] == 0 and r["rl_steps"]["rl"] >= 1 and r["rl_steps"]["fst"] >= 1
    assert r["fast_rounds"]["rl"] == 0 and r["fast_rounds"]["gepa"] >= 1 and r["fast_rounds"]["fst"] >= 1
    assert all(n >= 2 for n in r["curve_points"].values())  # evaluated before and after the cycle
    assert all(v is not None and 0.0 <= v <= 1.0 for v in r["final_val"].values())
    names = {Path(p).name for p in r["plots"]}
    assert {"reward_vs_samples.png", "kl_vs_reward.png"} <= names
    assert all(Path(p).stat().st_size > 1000 for p in r["plots"])
    print(f"03_fst_vs_rl smoke: {secs:.1f}s")


def test_04_continual(tmp_path):
    r, secs = run_notebook(NB_DIR / "04_continual.ipynb", tmp_path)
    assert r["stages"] == ["hover", "codeio", "physics"]
    assert r["tasks_seen"] == sorted(r["stages"])
    assert r["stage_switches"] == ["codeio", "physics"]
    assert all(n >= 1 for n in r["steps_per_stage"].values())
    assert r["seed_harnesses"] == ["generic"]
    assert r["dashboard_error"] is None
    assert saved_dashboard_snapshots(Path(r["_saved"]))
    print(f"04_continual smoke: {secs:.1f}s")
