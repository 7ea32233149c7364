"""The ``fst-lab`` command.

    fst-lab run CONFIG.yaml [--mode rl] [--cycles 3]   start a run (tqdm progress on every long step)
    fst-lab resume RUN_DIR                             continue a stopped or crashed run
    fst-lab eval RUN_DIR [--ablation]                  evaluate a run's policy + best harness
    fst-lab compare RUN_DIR [RUN_DIR ...] [--out DIR]  table + PNG plots (reward vs samples, KL vs reward)
    fst-lab demo                                       a small real FST run on the embedded model (make demo)
    fst-lab prepare                                    convert the embedded model once into the cache
    fst-lab app [--runs-root runs]                     the Gradio demo (same as `python app.py`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_prepare(args) -> int:
    from fst_lab.models import DEFAULT_MODEL, ensure_converted

    t0 = time.time()
    path = ensure_converted(args.model or DEFAULT_MODEL)
    print(f"embedded model ready at {path} ({time.time() - t0:.1f}s)")
    return 0


def _load_config(args):
    from fst_lab.config import FSTConfig

    cfg = FSTConfig.load(args.config) if getattr(args, "config", None) else FSTConfig()
    over = {}
    for key in ("mode", "cycles", "task", "run_name", "runs_root", "seed"):
        v = getattr(args, key, None)
        if v is not None:
            over[key] = v
    return cfg.replace(**over) if over else cfg


def _cmd_run(args) -> int:
    from fst_lab.session import Session

    cfg = _load_config(args)
    s = Session(cfg)
    print(f"run directory: {s.run_dir}")
    s.run()
    _print_summary([s.run_dir])
    return 0


def _cmd_resume(args) -> int:
    from fst_lab.session import Session

    s = Session.resume(args.run_dir)
    print(f"resumed {s.run_dir} at {s.counters}")
    s.run(args.cycles)
    _print_summary([s.run_dir])
    return 0


def _cmd_eval(args) -> int:
    from fst_lab.session import Session

    s = Session.resume(args.run_dir)
    res = {"best": s.evaluate(n=args.n)["reward"], "seed": s.evaluate(n=args.n, harness="seed")["reward"],
           "no_harness": s.evaluate(n=args.n, harness="none")["reward"]}
    if args.ablation:
        res["ablation"] = s.channel_ablation(n=args.n)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_compare(args) -> int:
    from fst_lab.report import compare_runs

    table, plots = compare_runs(args.run_dirs, out_dir=args.out)
    print(table)
    for p in plots:
        print(f"plot: {p}")
    return 0


def _print_summary(run_dirs) -> None:
    from fst_lab.report import compare_runs

    table, plots = compare_runs(run_dirs, out_dir=Path(run_dirs[0]) / "plots")
    print(table)
    for p in plots:
        print(f"plot: {p}")


def _cmd_demo(args) -> int:
    """A real FST run on the embedded model: 2 cycles of (GEPA round -> RL steps), then a summary."""
    from fst_lab.config import FSTConfig
    from fst_lab.session import Session

    t0 = time.time()
    cfg = FSTConfig(
        mode="fst", task=args.task, level=1, cycles=2, steps_per_cycle=2, population_size=2, num_generations=4,
        prompts_per_step=2, fast_train_size=4, fast_val_size=4, eval_size=16, max_new_tokens=64,
        # 3 passes = room for two proposals (one reflective, one bootstrapped: bootstrap_every=2).
        fast={"budget_passes": 3, "reflection_max_tokens": 192},
        # 4 RL steps only: the paper's 10 warm-up steps would keep the rate near 0 for the whole demo,
        # and LoRA needs a higher rate than full fine-tuning to move at all in 4 steps.
        slow={"learning_rate": 1e-4, "warmup_steps": 0}, runs_root=args.runs_root,
        run_name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    s = Session(cfg)
    print(f"fst_lab demo: FST on '{args.task}' with the embedded SmolLM2-135M-Instruct -> {s.run_dir}")
    seed_eval = s.evaluate()
    print(f"seed harness, base weights: val reward {seed_eval['reward']:.3f}")
    s.run()
    ablation = s.channel_ablation()
    _print_summary([s.run_dir])
    print("\n2x2 channel ablation (val mean reward):")
    for k, v in ablation.items():
        print(f"  {k:36s} {v:.3f}")
    print(f"\nwall time {time.time() - t0:.0f}s")
    print(f"open in JupyterLab:  make lab   then  fst_lab.ui.Dashboard(Session.resume('{s.run_dir}'))")
    print(f"open in the app:     python app.py --runs-root {args.runs_root}")
    return 0


def _cmd_app(args) -> int:
    import runpy

    sys.argv = ["app.py", "--runs-root", args.runs_root] + (["--port", str(args.port)] if args.port else [])
    app = Path(__file__).resolve().parent.parent / "app.py"
    runpy.run_path(str(app), run_name="__main__")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fst-lab", description="Learning, Fast and Slow: harness (GEPA) + weights (RL)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("prepare", help="convert the embedded model into the cache dir")
    sp.add_argument("--model", default=None)
    sp.set_defaults(fn=_cmd_prepare)
    sp = sub.add_parser("run", help="start a run from a YAML config")
    sp.add_argument("config", nargs="?")
    sp.add_argument("--mode", choices=["fst", "rl", "gepa"])
    sp.add_argument("--cycles", type=int)
    sp.add_argument("--task")
    sp.add_argument("--run-name", dest="run_name")
    sp.add_argument("--runs-root", dest="runs_root")
    sp.add_argument("--seed", type=int)
    sp.set_defaults(fn=_cmd_run)
    sp = sub.add_parser("resume", help="continue a run directory")
    sp.add_argument("run_dir")
    sp.add_argument("--cycles", type=int, default=None)
    sp.set_defaults(fn=_cmd_resume)
    sp = sub.add_parser("eval", help="evaluate a run")
    sp.add_argument("run_dir")
    sp.add_argument("--n", type=int, default=None)
    sp.add_argument("--ablation", action="store_true")
    sp.set_defaults(fn=_cmd_eval)
    sp = sub.add_parser("compare", help="compare runs: table + PNG plots")
    sp.add_argument("run_dirs", nargs="+")
    sp.add_argument("--out", default="runs/compare")
    sp.set_defaults(fn=_cmd_compare)
    sp = sub.add_parser("demo", help="a small real FST run on the embedded model")
    sp.add_argument("--task", default="math")
    sp.add_argument("--runs-root", dest="runs_root", default="runs")
    sp.set_defaults(fn=_cmd_demo)
    sp = sub.add_parser("app", help="launch the Gradio app")
    sp.add_argument("--runs-root", dest="runs_root", default="runs")
    sp.add_argument("--port", type=int, default=None)
    sp.set_defaults(fn=_cmd_app)
    args = p.parse_args(argv)
    from fst_lab.config import ConfigError
    from fst_lab.harness import HarnessError

    try:
        return int(args.fn(args) or 0)
    except (ConfigError, HarnessError) as e:
        print(f"fst-lab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
