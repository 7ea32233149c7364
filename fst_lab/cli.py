"""The ``fst-lab`` command.

    fst-lab run CONFIG.yaml [--mode rl] [--cycles 3]   start a run (tqdm progress on every long step)
    fst-lab run --dry-run CONFIG.yaml                  print what the run would do; load and write nothing
    fst-lab resume RUN_DIR                             continue a stopped or crashed run
    fst-lab eval RUN_DIR [--ablation]                  evaluate a run's policy + best harness
    fst-lab compare RUN_DIR [RUN_DIR ...] [--out DIR]  table + PNG plots (reward vs samples, KL vs reward)
    fst-lab consolidate RUN_DIR [--steps N]            distil the evolved harness into the weights
    fst-lab demo                                       a small real FST run on the embedded model (make demo)
    fst-lab prepare                                    convert the embedded model once into the cache
    fst-lab app [--runs-root runs]                     the Gradio demo (same as `python app.py`)

Bad input (a config, a task file, a run directory, a number) ends the command with one line on stderr,
``fst-lab: error: <file>:<line>: <field>: <what is wrong>``, and exit code 2, before anything is written;
a bug keeps its traceback (exit 1). ``--debug`` (or FST_LAB_DEBUG=1) shows the traceback for both.
Exit codes and error kinds: docs/ERRORS.md.
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

from fst_lab.errors import FstLabError, one_line  # noqa: E402  (after the environment defaults)

EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(FstLabError, ValueError):
    """Bad command-line input: an unknown option, a number out of range, a path of the wrong kind."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, so main() prints it like every other error)."""

    def error(self, message: str):
        sub = self.prog.partition(" ")[2]  # main() prints 'fst-lab: error: ' before it; name only a subcommand
        raise UsageError(f"{sub + ': ' if sub else ''}{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------- argument checks
def _int_at_least(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {'>= ' + str(lo) if hi is None else f'in {lo}..{hi}'}, "
                                             f"got {v}")
        return v

    return parse


def _run_view(path: str, *, config: bool = False):
    """The read-only view of a run directory (RunDirError naming the path if it is not one); writes nothing.
    ``config``: also check its config.yaml as a config (file:line: field), as resume and eval need it."""
    from fst_lab.config import FSTConfig
    from fst_lab.runs import CONFIG, load_run

    if config and (Path(path) / CONFIG).is_file():
        FSTConfig.load(Path(path) / CONFIG)
    return load_run(path)


def _start_session(cfg, config_path: str | None):
    """Session(cfg), with errors about a field placed at its line in the config file."""
    from fst_lab.config import ConfigError, field_lines
    from fst_lab.models import ModelNotFoundError, check_model
    from fst_lab.session import Session

    try:
        from fst_lab.plan import refuse_placeholders

        refuse_placeholders(cfg)  # configs/paper/*.yaml name no model until you fill one in
        check_model(cfg.model)
        return Session(cfg)
    except ModelNotFoundError as e:
        raise ConfigError(one_line(e).removeprefix("model: "), path="model").located(
            config_path, field_lines(config_path)) from e
    except ConfigError as e:
        raise e.located(config_path, field_lines(config_path)) from e


def _check_stages(cfg, config_path: str | None) -> None:
    """Build every stage's task and load its seed harness (both cheap: no model, no torch), an error placed at
    the line that set the field."""
    from fst_lab.config import ConfigError, field_lines
    from fst_lab.schedule import stage_harness, stage_task

    try:
        for idx in range(len(cfg.stage_list())):
            stage_harness(cfg, idx, stage_task(cfg, idx))
    except ConfigError as e:
        raise e.located(config_path, field_lines(config_path)) from e


def _not_a_file(path: str | None, what: str) -> None:
    """A directory we may create later must not already be a file."""
    if path is None:
        return
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise UsageError(f"{what} {path}: {q} exists and is not a directory")
            return


# ---------------------------------------------------------------------------- subcommands
def _cmd_prepare(args) -> int:
    from fst_lab.models import DEFAULT_MODEL, EMBEDDED, ensure_converted

    name = args.model or DEFAULT_MODEL
    if name not in EMBEDDED:
        raise UsageError(f"prepare --model: '{name}' is not an embedded model (choose from {sorted(EMBEDDED)})")
    t0 = time.time()
    path = ensure_converted(name)
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
    cfg = _load_config(args)
    if args.dry_run:
        try:
            from fst_lab.plan import describe_plan
        except ImportError:
            raise UsageError("run --dry-run: this installation has no fst_lab.plan") from None
        _check_stages(cfg, args.config)  # a dry run catches a stage's bad task arguments or broken harness too
        print(describe_plan(cfg))
        return 0
    _not_a_file(cfg.runs_root, "runs_root")
    s = _start_session(cfg, args.config)
    print(f"run directory: {s.run_dir}")
    s.run()
    _print_summary([s.run_dir])
    return 0


def _cmd_resume(args) -> int:
    _run_view(args.run_dir, config=True)
    from fst_lab.session import Session

    s = Session.resume(args.run_dir)
    print(f"resumed {s.run_dir} at {s.counters}")
    s.run(args.cycles)
    _print_summary([s.run_dir])
    return 0


def _cmd_eval(args) -> int:
    _run_view(args.run_dir, config=True)
    from fst_lab.session import Session

    s = Session.resume(args.run_dir)
    res = {"best": s.evaluate(n=args.n)["reward"], "seed": s.evaluate(n=args.n, harness="seed")["reward"],
           "no_harness": s.evaluate(n=args.n, harness="none")["reward"]}
    if args.ablation:
        res["ablation"] = s.channel_ablation(n=args.n)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_compare(args) -> int:
    for d in args.run_dirs:  # every input is checked before the output folder is created
        _run_view(d)
    _not_a_file(args.out, "--out")
    from fst_lab.report import compare_runs

    table, plots = compare_runs(args.run_dirs, out_dir=args.out)
    print(table)
    for p in plots:
        print(f"plot: {p}")
    return 0


def _cmd_consolidate(args) -> int:
    """Distil a run's evolved harness into its weights: ``--steps`` consolidation steps, then a summary."""
    view = _run_view(args.run_dir, config=True)
    from fst_lab.consolidate import ConsolidationError

    # What Session.consolidate would refuse, refused here first: resuming already writes to the run.
    if view.config.get("mode") == "gepa":
        raise ConsolidationError(f"{args.run_dir}: mode 'gepa' freezes the weights: no consolidation steps")
    seed = view.state.get("seed_harness")
    if not [h for h in view.state.get("population") or [] if h != seed]:
        raise ConsolidationError(f"{args.run_dir}: nothing to distil: the population holds only the seed harness "
                                 "(no fast step has evolved one); run a fast step first")
    from fst_lab.session import Session

    s = Session.resume(args.run_dir)
    for r in s.consolidate(args.steps):
        print("consolidate step {}: {}".format(r.get("consolidate_step"), ", ".join(
            f"{k} {r[k]:.4g}" for k in ("loss", "kl_teacher", "reward") if isinstance(r.get(k), (int, float)))))
    _print_summary([s.run_dir])
    return 0


def _print_summary(run_dirs) -> None:
    from fst_lab.report import compare_runs

    table, plots = compare_runs(run_dirs, out_dir=Path(run_dirs[0]) / "plots")
    print(table)
    for p in plots:
        print(f"plot: {p}")


def _demo_config(args):
    from fst_lab.config import demo_config

    return demo_config(args.task, runs_root=args.runs_root)


def _cmd_demo(args) -> int:
    """A real FST run on the embedded model: 2 cycles of (GEPA round -> RL steps), then a summary."""
    t0 = time.time()
    cfg = _demo_config(args)
    _not_a_file(cfg.runs_root, "--runs-root")
    s = _start_session(cfg, None)
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

    _not_a_file(args.runs_root, "--runs-root")
    if args.harness_dir is not None and not Path(args.harness_dir).is_dir():
        raise UsageError(f"--harness-dir {args.harness_dir}: no such directory")
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.exists():
        raise UsageError(f"{app}: not found (the app ships with the source tree, not the wheel)")
    sys.argv = ["app.py", "--runs-root", args.runs_root] + (["--port", str(args.port)] if args.port else []) \
        + (["--harness-dir", args.harness_dir] if args.harness_dir else [])
    runpy.run_path(str(app), run_name="__main__")
    return 0


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fst-lab", description="Learning, Fast and Slow: harness (GEPA) + weights (RL)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        sp.set_defaults(fn=fn)
        return sp

    sp = cmd("prepare", _cmd_prepare, "convert the embedded model into the cache dir")
    sp.add_argument("--model", default=None)
    sp = cmd("run", _cmd_run, "start a run from a YAML config")
    sp.add_argument("config", nargs="?")
    sp.add_argument("--mode", choices=["fst", "rl", "gepa"])
    sp.add_argument("--cycles", type=_int_at_least(0))
    sp.add_argument("--task")
    sp.add_argument("--run-name", dest="run_name")
    sp.add_argument("--runs-root", dest="runs_root")
    sp.add_argument("--seed", type=_int_at_least(0))
    sp.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="print the plan (steps, rollouts, memory) and exit; loads no model, writes nothing")
    sp = cmd("resume", _cmd_resume, "continue a run directory")
    sp.add_argument("run_dir")
    sp.add_argument("--cycles", type=_int_at_least(0), default=None)
    sp = cmd("eval", _cmd_eval, "evaluate a run")
    sp.add_argument("run_dir")
    sp.add_argument("--n", type=_int_at_least(1), default=None)
    sp.add_argument("--ablation", action="store_true")
    sp = cmd("compare", _cmd_compare, "compare runs: table + PNG plots")
    sp.add_argument("run_dirs", nargs="+")
    sp.add_argument("--out", default="runs/compare")
    sp = cmd("consolidate", _cmd_consolidate, "distil a run's evolved harness into its weights")
    sp.add_argument("run_dir")
    sp.add_argument("--steps", type=_int_at_least(1), default=None,
                    help="consolidation steps (default: the run config's consolidate.steps)")
    sp = cmd("demo", _cmd_demo, "a small real FST run on the embedded model")
    sp.add_argument("--task", default="math")
    sp.add_argument("--runs-root", dest="runs_root", default="runs")
    sp = cmd("app", _cmd_app, "launch the Gradio app")
    sp.add_argument("--runs-root", dest="runs_root", default="runs")
    sp.add_argument("--port", type=_int_at_least(1, 65535), default=None)
    sp.add_argument("--harness-dir", dest="harness_dir", default=None)
    return p


def _is_input_error(e: BaseException) -> bool:
    """Errors a person causes and can fix: ours, and missing/unreadable files or bad YAML reaching the top."""
    import yaml

    return isinstance(e, (FstLabError, OSError, yaml.YAMLError, UnicodeDecodeError))


def describe(e: BaseException) -> str:
    """The one line printed after ``fst-lab: error:``."""
    if isinstance(e, OSError) and not isinstance(e, FstLabError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text ({e.reason} at byte {e.start})"
    return one_line(e)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is named with the subcommand it was given to, whose --help lists the
    right ones (argparse reports it from the top-level parser)."""
    parser = build_parser()
    for tok in argv:  # an unknown option before the command: argparse would only say the command is missing
        if not tok.startswith("-"):
            break
        if tok not in ("-h", "--help", "--debug"):
            raise UsageError(f"unrecognized arguments: {tok} (see fst-lab --help)")
    args, extra = parser.parse_known_args(argv)
    if extra:
        cmd = getattr(args, "cmd", None)
        raise UsageError(f"{cmd + ': ' if cmd else ''}unrecognized arguments: {' '.join(extra)} "
                         f"(see fst-lab{' ' + cmd if cmd else ''} --help)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 bad input, 130 interrupted; a bug raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # known before parsing, so that a usage error can show its traceback too
    debug = "--debug" in argv or os.environ.get("FST_LAB_DEBUG", "") not in ("", "0")
    try:
        args = _parse(argv)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("fst-lab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug or not _is_input_error(e):
            raise
        print(f"fst-lab: error: {describe(e)}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
