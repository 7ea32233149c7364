"""The quickstart in a real JupyterLab, in headless Chromium: run all cells, see the dashboard.

Starts ``jupyter lab`` on 127.0.0.1 (free port, token, no browser) over a temporary copy of
``notebooks/`` whose quickstart has smoke parameters injected, opens it with Playwright driving
Debian's Chromium (``make browser-deps``; Playwright's own browser download is not used), runs
*Run ▸ Run All Cells*, waits for the notebook's ``FST_RESULTS`` line, and checks the dashboard's
buttons and plot are rendered. Screenshot: ``test-artifacts/lab_quickstart.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# ~40 s on an idle 2-core machine; generous because CI machines are shared.
RUN_TIMEOUT = 300
BUTTONS = ["Fast step", "Slow step (n)", "Run cycles", "Evaluate", "Pause", "Stop"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_root(tmp: Path) -> tuple[Path, Path]:
    root = tmp / "lab"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
    results = tmp / "results.json"
    nb = nbformat.read(root / "01_quickstart.ipynb", as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell(f"SMOKE = True\nRUNS_ROOT = {str(tmp / 'runs')!r}\n"
                                     f"RESULTS_PATH = {str(results)!r}")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)
    nbformat.write(nb, root / "01_quickstart.ipynb")
    return root, results


def _lab_settings(tmp: Path) -> Path:
    """User settings: render every cell (no windowing, so the dashboard stays in the DOM), start the
    notebook's kernel without asking, no news toasts."""
    d = tmp / "lab-settings"
    (d / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (d / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    (d / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (d / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return d


@pytest.fixture
def lab(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (run `make browser-deps`, i.e. apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    root, results = _prepare_root(tmp_path)
    port, token = _free_port(), "fst-lab-test-token"
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(_lab_settings(tmp_path)),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "lab.log", "w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"base": base, "token": token, "results": results, "log": tmp_path / "lab.log"}
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """End the server we started and its kernels (its own process group), nothing else."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def test_quickstart_runs_in_jupyterlab_and_shows_the_dashboard(lab, artifacts_dir):
    from playwright.sync_api import sync_playwright

    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab['base']}/lab/tree/01_quickstart.ipynb?token={lab['token']}&reset")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            select = page.locator(".jp-Dialog button", has_text="Select")  # kernel picker, if it still shows
            try:
                select.first.click(timeout=3_000)
            except Exception:
                pass
            # wait for the kernel before running (the toolbar shows its status)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            deadline = time.time() + RUN_TIMEOUT
            while not lab["results"].exists():
                if time.time() > deadline:
                    page.screenshot(path=str(artifacts_dir / "lab_quickstart_timeout.png"))
                    errors = page.locator(".jp-OutputArea-output[data-mime-type*='stderr'], "
                                          ".jp-RenderedText[data-mime-type*='error']").all_inner_texts()
                    pytest.fail(f"the quickstart did not finish in JupyterLab within {RUN_TIMEOUT} s "
                                f"(screenshot: lab_quickstart_timeout.png)\nerror outputs: {errors[-3:]}\n"
                                f"{lab['log'].read_text()[-1000:]}")
                time.sleep(1)
            results = json.loads(lab["results"].read_text())
            page.get_by_text("FST_RESULTS").first.wait_for(timeout=30_000)

            dash = page.locator(".fst-dashboard").first
            dash.wait_for(state="visible", timeout=30_000)
            for label in BUTTONS:
                assert dash.locator("button", has_text=label).first.is_visible(), f"button {label!r} not shown"
            img = dash.locator("img").first
            img.wait_for(state="visible", timeout=30_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=img.element_handle(),
                                   timeout=30_000)
            assert "RL step 2" in dash.inner_text()  # the status line followed the session
            assert "last RL step reward" in dash.inner_text()  # with the share of its rollouts that gave no answer
            assert dash.locator(".fst-table").first.is_visible()  # the population table
            dash.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts_dir / "lab_quickstart.png"))
        finally:
            browser.close()
    assert results["rl_steps"] == 2 and results["dashboard_error"] is None
    print(f"JupyterLab quickstart: {time.time() - t0:.0f}s from opening the page to the screenshot")
