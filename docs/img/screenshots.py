"""Screenshots of the app's tabs in headless Chromium, for docs/img/ (before/after comparisons).

    .venv/bin/python docs/img/screenshots.py docs/img            # after: docs/img/app_*.png
    .venv/bin/python docs/img/screenshots.py docs/img/before     # (taken on the old code)

Builds a tiny real run (tiny random policy, 2 FST cycles) under /tmp/fst-shots/runs unless it exists,
serves the app on 127.0.0.1 and photographs every tab. Needs Debian's chromium (``make browser-deps``).
The dashboard's screenshot comes from tests/test_lab_browser.py (test-artifacts/lab_quickstart.png).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
ROOT = Path("/tmp/fst-shots-after/runs")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def build_run() -> None:
    if (ROOT / "shots").exists():
        return
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    cfg = FSTConfig.from_dict(dict(
        mode="fst", task="math", level=1, cycles=2, steps_per_cycle=2, population_size=2, num_generations=2,
        prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=8, seed=0,
        fast={"max_metric_calls": 4, "reflection_max_tokens": 8, "reflection_minibatch_size": 1,
              "reflection_retries": 0},
        slow={"learning_rate": 1e-3}, runs_root=str(ROOT), run_name="shots", save_rollouts=2))
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    s.evaluate()  # the starting point of the result line
    s.run()
    s.channel_ablation()
    # a hand edit, so the Evolution tab has a diff to show (a tiny random model's GEPA proposals rarely parse)
    s.edit_harness(0, {"system_prompt": "You solve arithmetic word problems. Write one short line of working,\n"
                                        "then finish with the final number as 'Answer: <number>'.\n"},
                   note="clearer answer format")
    s.close()


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright

    import app as app_module
    from fst_lab.models import tiny_policy

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_run()
    demo = app_module.build_app(ROOT, policy_factory=lambda name: tiny_policy(seed=0))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            time.sleep(3)
            page.screenshot(path=str(out_dir / "app_open.png"), full_page=True)
            if "shots" not in page.locator("body").inner_text():  # the old app opened on "(no run)"
                page.get_by_label("Run", exact=True).first.click()
                page.get_by_role("option", name="shots").first.click()
                time.sleep(4)
            tabs = page.get_by_role("tab")
            names = [tabs.nth(i).inner_text().strip() for i in range(tabs.count())]
            for i, name in enumerate(names):
                page.get_by_role("tab").nth(i).click()
                time.sleep(3)
                slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
                page.screenshot(path=str(out_dir / f"app_tab_{i}_{slug}.png"), full_page=True)
            if "Train" in names:  # a session started from the app, photographed mid-step and after
                page.get_by_role("tab", name="Train").click()
                page.get_by_role("button", name="Start session").click()
                page.locator("#fast-btn").wait_for(state="visible")
                deadline = time.time() + 300
                while not page.locator("#fast-btn").is_enabled() and time.time() < deadline:
                    time.sleep(0.5)
                page.locator("#fast-btn").click()
                while "GEPA metric calls" not in page.locator("#train-progress").inner_text() and time.time() < deadline:
                    time.sleep(0.2)
                page.screenshot(path=str(out_dir / "app_train_progress.png"), full_page=False)
                while "fast step (GEPA round" not in page.locator("#train-message").inner_text() \
                        and time.time() < deadline:
                    time.sleep(0.5)
                time.sleep(2)
                page.screenshot(path=str(out_dir / "app_train_done.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print("wrote", sorted(x.name for x in out_dir.glob("app_*.png")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "docs" / "img"))
