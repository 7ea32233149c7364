"""Does a speed or training setting change what the demo learns? The demo's schedule over seeds, per variant.

    python -m benchmarks.bench_learning --variants fp32,bf16 --seeds 0,1,2 --threads 1     # issue 19's check
    python -m benchmarks.bench_learning --variants fp32,rl_distill --seeds 0,1,2           # RL + distillation
    python -m benchmarks.bench_learning --adopt fp32:0=runs/demo-20261201-040758            # count a finished demo
    python -m benchmarks.bench_learning --smoke                                            # CI: tiny model

Every run is ``fst-lab demo``'s configuration (:func:`fst_lab.config.demo_config`: 2 cycles of a GEPA
round then 2 RL steps, 64 samples in all) with one seed and one variant's overrides:

- ``fp32``: ``slow.precision: fp32`` (the demo's default before ``auto``); plain FST for the RL + distillation
  comparison;
- ``bf16``: ``slow.precision: bf16`` (what ``auto``, the default, picks for the embedded model on a CPU with
  bf16 instructions: linears stored in bf16, bf16 autocast for rollouts, training and the reference forward);
- ``auto``: no override, the default as it ships (``precision: auto``; recorded per run with its commit);
- ``rl_distill``: ``consolidate.rl_coef: 0.1`` (each RL step also pulls the minimal-harness policy toward the
  harness-conditioned one), at the same samples as ``fp32``.

Per run: validation reward (16 problems, greedy) of the best harness with the trained weights at every cycle,
the probe KL to the start weights, the same trained weights under the minimal ("short") harness, wall time
and the load average. Runs start or resume through :func:`benchmarks.bench_powered.run_one` (a stopped
benchmark continues where it stopped); finished (variant, seed) pairs are skipped. Writes
``benchmarks/results/learning.json`` after every run and prints the markdown section.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, load_result, loadavg, new_result, parse_args, save_result, table  # noqa: E402

NAME = "learning"
MODULE = "benchmarks.bench_learning"
TITLE = "Learning unchanged? The demo's schedule over seeds: fp32 vs bf16, FST vs RL + distillation"
RUNS_ROOT = Path("runs") / "learning"
VARIANTS = {
    "fp32": {"slow": {"precision": "fp32"}},
    "bf16": {"slow": {"precision": "bf16"}},
    "rl_distill": {"slow": {"precision": "fp32"}, "consolidate": {"rl_coef": 0.1}},
    "auto": {"slow": {}},  # the shipped default (precision auto: bf16 for the embedded model on a bf16 CPU)
    # The same default after session 8's generation changes (inverse-CDF sampling: the same distribution from
    # another random stream; lean LoRA forward, bit-identical): a fresh set of seeds, compared with "auto".
    "auto_s8": {"slow": {}},
}


def variant_config(variant: str, seed: int, root: Path, smoke: bool) -> dict:
    from fst_lab.config import demo_config

    over = VARIANTS[variant]
    kw = dict(seed=seed, runs_root=str(root), slow=over.get("slow"), report_to="none")
    if "consolidate" in over:
        kw["consolidate"] = over["consolidate"]
    if smoke:
        kw.update(cycles=1, steps_per_cycle=1, num_generations=2, prompts_per_step=1, fast_train_size=2,
                  fast_val_size=2, eval_size=2, max_new_tokens=6,
                  fast={"budget_passes": 1.0, "reflection_max_tokens": 16, "reflection_minibatch_size": 1},
                  slow={**over.get("slow", {}), "learning_rate": 1e-3, "kl_probe_size": 1})
    return demo_config("math", **kw).to_dict()


def minimal_reward(run_dir: Path, smoke: bool) -> dict:
    """The run's trained weights under the minimal ("short") harness and under its best harness (greedy)."""
    from fst_lab.consolidate import minimal_harness
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    with Session.resume(run_dir, policy=tiny_policy(seed=0) if smoke else None, progress=False) as s:
        minimal = minimal_harness(s.seed_harness, s.config.consolidate.student)
        return {"minimal": s.evaluate(harness=minimal, record=False)["reward"],
                "minimal_id": minimal.id, "load": loadavg()}


def adopt(spec: dict, run_dir: Path) -> dict:
    """The record of a finished run made elsewhere (e.g. by ``make demo``) with the same configuration."""
    from fst_lab import records
    from fst_lab.runs import load_run

    view = load_run(run_dir)
    evals = [{k: r.get(k) for k in ("samples", "rl_step", "cycle", "reward", "kl")}
             for r in records.of_kind(view.metrics, "eval") if r.get("harness", "best") == "best"]
    first, last = view.metrics[0], view.metrics[-1]
    ab = records.latest(view.metrics, "ablation")
    return {**spec, "adopted_from": str(run_dir), "config": view.config, "seconds": None,
            "loadavg": [], "counters": records.counter_fields(last), "evals": evals,
            "final": {"val_reward": evals[-1]["reward"], "val_reward_max": max(e["reward"] for e in evals),
                      "kl": evals[-1].get("kl"), "train_reward": (records.latest(view.metrics, "slow") or {}).get("reward")},
            "ablation": {k: ab[k] for k in records.KEYS[records.ABLATION]} if ab else None,
            "started": first.get("ts"), "ended": last.get("ts")}


# ---------------------------------------------------------------------------- report
def _spread(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.fmean(xs)
    return f"{fmt(m)} ± {fmt(statistics.stdev(xs)) if len(xs) > 1 else '–'} (min {fmt(min(xs))}, max {fmt(max(xs))})"


def summary(res: dict) -> dict:
    out = {}
    for v in VARIANTS:
        runs = [r for r in res["runs"] if r["variant"] == v]
        if not runs:
            continue
        secs = [r["seconds"] for r in runs if r.get("seconds")]
        out[v] = {"seeds": [r["seed"] for r in runs],
                  "val_reward": [r["final"]["val_reward"] for r in runs],
                  "kl": [r["final"]["kl"] for r in runs],
                  "minimal": [r.get("minimal", {}).get("minimal") for r in runs],
                  "samples": [r["counters"].get("samples") for r in runs],
                  "seconds": secs}
    return out


def markdown(res: dict, plots_rel: str | None = None) -> str:
    s = summary(res)
    if not s:
        return "No runs yet: `python -m benchmarks.bench_learning --variants fp32,bf16,rl_distill --seeds 0,1,2`"
    rows = [{"variant": v, "seeds": ",".join(map(str, d["seeds"])),
             "final val reward (best harness), mean ± sd": _spread(d["val_reward"]),
             "probe KL to start": _spread(d["kl"]),
             "trained weights + minimal harness": _spread(d["minimal"]),
             "samples": ",".join(str(x) for x in d["samples"]),
             "wall s per run (median)": f"{statistics.median(d['seconds']):.0f}" if d["seconds"] else "–"}
            for v, d in s.items()]
    per = [{"variant": r["variant"], "seed": r["seed"], "val rewards by cycle": [e["reward"] for e in r["evals"]],
            "kl": fmt(r["final"]["kl"]), "minimal": fmt(r.get("minimal", {}).get("minimal")),
            "wall s": f"{r['seconds']:.0f}" if r.get("seconds") else "(adopted)",
            "load": r.get("loadavg")[-1] if r.get("loadavg") else "–"} for r in res["runs"]]
    cols = list(rows[0])
    cmds = res.get("commands") or [res["command"]]
    return "\n".join(["Commands: " + "; ".join(f"`{c}`" for c in cmds), "", table(rows, cols), "",
                      table(per, list(per[0])), ""])


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--variants", default="fp32,bf16", help=f"comma-separated, of {','.join(VARIANTS)}")
        p.add_argument("--seeds", default="0,1,2")
        p.add_argument("--runs-root", default=None)
        p.add_argument("--adopt", action="append", default=[], metavar="VARIANT:SEED=RUN_DIR",
                       help="count a finished run with the demo's configuration instead of making it")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    root = Path(args.runs_root) if args.runs_root else ((args.out / "runs") if args.smoke else RUNS_ROOT)
    res = load_result(args.out, NAME) or new_result(NAME, MODULE, argv, smoke=args.smoke, runs=[])
    done = {(r["variant"], r["seed"]) for r in res["runs"]}
    for a in args.adopt:
        key, run_dir = a.split("=", 1)
        v, sd = key.split(":")
        if (v, int(sd)) not in done:
            rec = adopt({"name": Path(run_dir).name, "variant": v, "seed": int(sd), "mode": "fst", "task": "math"},
                        Path(run_dir))
            rec["minimal"] = minimal_reward(Path(run_dir), args.smoke)
            res["runs"].append(rec)
            done.add((v, int(sd)))
            save_result(args.out, NAME, res)
    from benchmarks.bench_powered import run_one

    for sd in [int(x) for x in args.seeds.split(",") if x]:
        for v in [x for x in args.variants.split(",") if x]:
            if (v, sd) in done:
                continue
            spec = {"name": f"demo-{v}-s{sd}", "variant": v, "seed": sd, "mode": "fst", "task": "math"}
            print(f"== {spec['name']} (load {loadavg()})", flush=True)
            rec = run_one(spec, variant_config(v, sd, root, args.smoke), root, smoke=args.smoke, stop_after=None,
                          deadline=None)
            if rec is None:
                continue
            rec["minimal"] = minimal_reward(root / spec["name"], args.smoke)
            res["runs"].append(rec)
            save_result(args.out, NAME, res)
            print(f"   final val {rec['final']['val_reward']}, kl {rec['final']['kl']}, "
                  f"minimal {rec['minimal']['minimal']}, {rec['seconds']:.0f} s", flush=True)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(args.out, NAME, res)
    print(f"## {TITLE}\n\n{markdown(res)}")
    return res


if __name__ == "__main__":
    main()
