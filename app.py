"""The fst_lab app: compare harnesses side by side, see how they evolved, and steer a live run.

    python app.py [--runs-root runs] [--port 7860]      # or: make app / fst-lab app

Tabs:
- **Arena**: one input (free text, or a task example with its score and feedback) goes to two
  harnesses — by default the run's seed harness vs its best evolved one — with the base, trained or
  consolidated weights (by default the ones the run's harnesses last evolved with); both answers stream
  in, tool calls and observations as collapsible messages. The
  agent loop is :func:`fst_lab.rollout.rollout_pairs`, the one training uses.
- **Evolution**: the line diff of the two harnesses, the population's lineage tree, reward vs
  samples and KL vs reward.
- **Train**: start a Session from a YAML config, step fast / slow, run cycles, pause / stop (with
  progress by phase), hand-edit a harness of the live population (a ``manual`` lineage node).

The app opens on the newest run under ``--runs-root`` with its result (validation start → end, the
2x2 ablation). The code lives in the :mod:`fst_lab.app` package, one module per tab.

Safe defaults: binds 127.0.0.1; opens run directories only inside ``--runs-root`` and only through
:mod:`fst_lab.runs`' pure loaders (JSON/YAML) plus safetensors adapters; api_key-like fields are
redacted from everything shown. Every event has an ``api_name``, so ``gradio_client`` can drive it all.
Without any run it still demos: pick two files from ``harnesses/`` and the embedded model answers.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

from fst_lab.app import build_app  # noqa: F401  (re-exported: tests and notebooks call app.build_app)

HOST = "127.0.0.1"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fst_lab app: harness arena, evolution views, run steering")
    p.add_argument("--runs-root", default="runs", help="directory holding run directories (the app reads nothing "
                                                       "outside it)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--harness-dir", default=None, help="harness files for the arena (default: harnesses/)")
    args = p.parse_args(argv)
    Path(args.runs_root).mkdir(parents=True, exist_ok=True)
    demo = build_app(args.runs_root, harness_dir=args.harness_dir)
    demo.queue().launch(server_name=HOST, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
