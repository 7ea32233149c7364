"""Sample efficiency and drift: FST vs RL-only vs GEPA-only, same config, seeds and budget.

    python -m benchmarks.bench_efficiency                 # math + codeio, 3 seeds, embedded SmolLM2-135M
    python -m benchmarks.bench_efficiency --smoke         # tiny random model, 1 task, 1 seed (CI)
    python -m benchmarks.bench_efficiency --variant nobootstrap --modes fst     # "what it takes" runs
    nohup python -m benchmarks.bench_efficiency > runs/bench-efficiency.log 2>&1 &   # how the full run is started

For every (seed, task) the three modes run from one :class:`FSTConfig` that differs only in ``mode``:
``Session(cfg.replace(mode=m)).run()`` with an evaluation before training and after every cycle
(greedy, mean@1 on a fixed validation slice). Measured, per task and aggregated over seeds:

- running-max validation reward vs samples — "samples" = every policy rollout that fed learning: RL
  rollouts plus *all* fast-loop rollouts (GEPA's metric calls and the re-scoring of the population),
  so FST pays for its fast loop; evaluation rollouts are measurement and count for no one;
- samples (and RL steps) to reach RL-only's peak, as a ratio (paper: ≥ 3× fewer);
- ScaleRL-style 4-parameter sigmoid fit → asymptote (pooled points of all seeds);
- KL(π‖π_base) at matched validation reward, FST / RL (paper: ≤ 0.3×), from the slow loop's exact KL
  probe on fixed sequences;
- the 2×2 channel ablation {base, trained weights} × {seed, evolved harness} at the end of each FST run.

Results are written after every finished run (``benchmarks/results/efficiency.json``), so a run that
is stopped keeps what finished; ``python -m benchmarks.run_all --docs-only`` renders what is there.
Run directories (with checkpoints disabled) go to ``runs/bench-efficiency/`` (git-ignored).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from benchmarks.common import (REPO, load_result, loadavg, mean_ci, median, new_result, parse_args, plot_dir,
                               plt, save_result, table)

NAME = "efficiency"
MODULE = "benchmarks.bench_efficiency"
TARGET_SAMPLES = 3.0  # paper: FST reaches RL's peak with >= 3x fewer samples/steps (CodeIO, HoVer-hard)
TARGET_KL = 0.3  # paper: ~70% less KL at matched accuracy
MODES = ("rl", "fst", "gepa")

# "What it takes": FST variants compared against the same RL-only runs.
VARIANTS = {
    "default": {},
    "nobootstrap": {"fast": {"bootstrap": False}},
    "bootstrap_always": {"fast": {"bootstrap_every": 1}},
    "K4": {"population_size": 4, "num_generations": 8},
    # budget_passes 4 over 3 train examples = 12 metric calls, barely above the floor of 10 that the
    # default (2 passes) is raised to: still one proposal per round at the benchmark's sizes.
    "budget2x": {"fast": {"budget_passes": 4.0}},
    # An exact budget with room for ~3 proposals per round: 4 (seed's val run) + 3 x (3 parent + 3 child
    # minibatch rollouts + 4 val when accepted) = 34 metric calls.
    "proposals3": {"fast": {"max_metric_calls": 34}},
}


# ---------------------------------------------------------------------------- config
def base_config(args, task: str, seed: int) -> dict:
    """One FSTConfig for all modes; only ``mode`` changes between them."""
    if args.smoke:
        return dict(task=task, level=1, cycles=2, steps_per_cycle=1, population_size=2, num_generations=2,
                    prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, eval_k=1, max_new_tokens=6,
                    fast={"budget_passes": 1, "reflection_max_tokens": 16, "reflection_minibatch_size": 1},
                    slow={"learning_rate": 1e-3, "kl_probe_size": 1}, seed=seed, checkpoint_every=10_000,
                    save_rollouts=0)
    return dict(task=task, level=1, cycles=args.cycles, steps_per_cycle=args.steps, population_size=args.K,
                num_generations=args.G, prompts_per_step=args.prompts, fast_train_size=args.fast_train,
                fast_val_size=args.fast_val, eval_size=args.eval_size, eval_k=1, max_new_tokens=args.max_new_tokens,
                fast={"budget_passes": args.budget_passes, "reflection_max_tokens": args.reflection_max_tokens},
                slow={"learning_rate": args.lr, "warmup_steps": args.warmup, "kl_probe_size": 4}, seed=seed,
                checkpoint_every=10_000,
                save_rollouts=0)


def apply_variant(cfg: dict, variant: str) -> dict:
    cfg = {**cfg, "fast": dict(cfg["fast"]), "slow": dict(cfg["slow"])}
    for k, v in VARIANTS[variant].items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


# ---------------------------------------------------------------------------- one run
def run_one(cfg_dict: dict, mode: str, run_dir: Path, *, smoke: bool, ablation: bool) -> dict:
    """Evaluate, run the schedule, (ablate); return the records the analysis needs."""
    import shutil

    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    cfg = FSTConfig.from_dict({**cfg_dict, "mode": mode, "runs_root": str(run_dir.parent), "run_name": run_dir.name})
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    s = Session(cfg, policy=tiny_policy(seed=0) if smoke else None, progress=False)
    s.evaluate()  # the start point (samples 0) of every curve
    s.run()
    out = {"mode": mode, "run_dir": str(run_dir), "seconds": None, "records": compact(s.metrics)}
    if ablation:
        out["ablation"] = s.channel_ablation(n=cfg.eval_size)
    out["seconds"] = time.time() - t0
    out["status"] = s.status()
    s.close()  # ends the trainer thread
    del s
    import gc

    gc.collect()  # each run holds a policy, a trainer and its optimizer: free them before the next
    return out


def compact(metrics: list[dict]) -> list[dict]:
    """The fields the analysis reads, with ``rollouts`` = all learning rollouts so far (RL + fast loop)."""
    keep = ("kind", "cycle", "rl_step", "fast_round", "stage", "task", "samples", "samples_rl", "samples_fast",
            "reward", "kl", "kl_train", "time", "seconds", "metric_calls", "rollouts", "rescore_rollouts",
            "proposals", "accepted", "bootstrap_proposals", "reflection_calls", "best_val")
    fast_rollouts = 0
    out = []
    for m in metrics:
        if m.get("kind") == "fast":
            fast_rollouts += int(m.get("rollouts") or m.get("metric_calls") or 0)
        r = {k: m[k] for k in keep if k in m}
        r["all_rollouts"] = int(m.get("samples_rl", 0)) + fast_rollouts
        out.append(r)
    return out


# ---------------------------------------------------------------------------- analysis
def eval_curve(rec: list[dict], x: str = "all_rollouts") -> tuple[list[float], list[float]]:
    """(xs, running-max ys) of the validation evaluations."""
    from fst_lab.records import running_max

    pts = [(r[x], r["reward"]) for r in rec if r.get("kind") == "eval" and r.get("reward") is not None]
    xs = [p[0] for p in pts]
    return xs, running_max([p[1] for p in pts])


def kl_points(rec: list[dict], mode: str) -> list[tuple[float, float]]:
    """(val reward, KL to base) at every evaluation; GEPA-only never moves the weights (KL 0)."""
    pts = []
    for r in rec:
        if r.get("kind") != "eval" or r.get("reward") is None:
            continue
        kl = 0.0 if (mode == "gepa" or r.get("rl_step", 0) == 0) else r.get("kl")
        if kl is not None:
            pts.append((float(r["reward"]), float(kl)))
    return pts


def mean_curve(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """Mean of step functions over the union of their x positions (each held at its last value)."""
    xs = sorted({x for c in curves for x in c[0]})
    if not xs:
        return [], []
    ys = []
    for x in xs:
        vals = []
        for cx, cy in curves:
            v = None
            for xi, yi in zip(cx, cy):
                if xi <= x:
                    v = yi
            vals.append(v if v is not None else (cy[0] if cy else 0.0))
        ys.append(sum(vals) / len(vals))
    return xs, ys


def analyse(res: dict) -> dict:
    """Per task (and variant): efficiency ratios, asymptotes, KL at matched reward, ablation means."""
    from fst_lab.metrics import efficiency_ratio, fit_asymptote, kl_at_matched_reward

    runs = res.get("runs", [])
    out = {}
    for variant in sorted({r["variant"] for r in runs}):
        for task in sorted({r["task"] for r in runs}):
            def pick(mode, seed=None, v=variant):
                vv = "default" if mode == "rl" else v  # RL-only does not depend on the FST variant
                return [r for r in runs if r["task"] == task and r["variant"] == vv and r["mode"] == mode
                        and (seed is None or r["seed"] == seed)]

            seeds = sorted({r["seed"] for r in pick("fst")} | ({r["seed"] for r in pick("gepa")}
                                                              if variant == "default" else set()))
            if not seeds:
                continue
            a = {"seeds": seeds, "per_seed": {}}
            for seed in seeds:
                rl, fst, gepa = pick("rl", seed), pick("fst", seed), pick("gepa", seed)
                d = {}
                if rl and fst:
                    rl_c, fst_c = eval_curve(rl[0]["records"]), eval_curve(fst[0]["records"])
                    d["samples_ratio"] = efficiency_ratio(rl_c, fst_c)
                    d["steps_ratio"] = efficiency_ratio(eval_curve(rl[0]["records"], "rl_step"),
                                                        eval_curve(fst[0]["records"], "rl_step"))
                    d["kl_matched"] = kl_at_matched_reward(kl_points(rl[0]["records"], "rl"),
                                                           kl_points(fst[0]["records"], "fst"))
                if rl and gepa:
                    d["gepa_samples_ratio"] = efficiency_ratio(eval_curve(rl[0]["records"]),
                                                               eval_curve(gepa[0]["records"]))
                for mode, rr in (("rl", rl), ("fst", fst), ("gepa", gepa)):
                    if rr:
                        xs, ys = eval_curve(rr[0]["records"])
                        d[f"{mode}_start"], d[f"{mode}_peak"] = (ys[0] if ys else None), (ys[-1] if ys else None)
                        d[f"{mode}_final_samples"] = xs[-1] if xs else None
                        d[f"{mode}_seconds"] = rr[0]["seconds"]
                        kls = [k for _, k in kl_points(rr[0]["records"], mode)]
                        d[f"{mode}_kl_final"] = kls[-1] if kls else None
                a["per_seed"][str(seed)] = d
            # aggregate over seeds: mean curves and ratios of the mean curves (more stable than per-seed)
            curves = {}
            for mode in MODES:
                cs = [eval_curve(r["records"]) for s in seeds for r in pick(mode, s)]
                if cs:
                    curves[mode] = {"mean": mean_curve(cs), "n": len(cs)}
                    pooled = sorted((x, y) for c in cs for x, y in zip(*c))
                    curves[mode]["asymptote"] = fit_asymptote([p[0] for p in pooled], [p[1] for p in pooled])
            a["curves"] = curves
            if "rl" in curves and "fst" in curves:
                a["samples_ratio_mean_curve"] = efficiency_ratio(curves["rl"]["mean"], curves["fst"]["mean"])
            if "rl" in curves and "gepa" in curves:
                a["gepa_samples_ratio_mean_curve"] = efficiency_ratio(curves["rl"]["mean"], curves["gepa"]["mean"])
            per = a["per_seed"].values()
            a["samples_ratio_seeds"] = [d["samples_ratio"]["ratio"] for d in per if "samples_ratio" in d]
            a["steps_ratio_seeds"] = [d["steps_ratio"]["ratio"] for d in per if "steps_ratio" in d]
            a["kl_ratio_seeds"] = [d["kl_matched"]["ratio"] for d in per if "kl_matched" in d]
            a["fst_reached_rl_peak"] = sum(1 for d in per
                                           if d.get("samples_ratio", {}).get("other_samples") is not None)
            a["rl_improved"] = sum(1 for d in per if (d.get("rl_peak") or 0) > (d.get("rl_start") or 0))
            abl = [r["ablation"] for s in seeds for r in pick("fst", s) if r.get("ablation")]
            if abl:
                a["ablation"] = {k: mean_ci([x[k] for x in abl]) for k in abl[0]}
            out[f"{variant}/{task}"] = a
    return out


# ---------------------------------------------------------------------------- main
def run(args) -> dict:
    logging.getLogger("fst_lab").setLevel(logging.WARNING)
    smoke = args.smoke
    tasks = ["math"] if smoke and not args.tasks_given else args.tasks
    seeds = [0] if smoke and not args.seeds_given else args.seeds
    modes = args.modes
    prev = None if (smoke or args.fresh) else load_result(args.out, NAME)
    res = new_result(NAME, MODULE, args.argv, smoke=smoke,
                     model="tiny-llama (random init)" if smoke else "smollm2-135m",
                     targets={"samples_ratio": TARGET_SAMPLES, "kl_ratio": TARGET_KL})
    res["runs"] = list(prev.get("runs", [])) if prev else []
    res["configs"] = dict(prev.get("configs", {})) if prev else {}
    res.setdefault("commands", list(prev.get("commands", [])) if prev else [])
    res["commands"].append(res["command"])
    root = (Path(args.out) / "runs") if smoke else REPO / "runs" / "bench-efficiency"
    done = {(r["variant"], r["task"], r["seed"], r["mode"]) for r in res["runs"]}
    t_start = time.time()
    # A stopped run keeps complete comparisons: by default all seeds of the first task come first.
    if args.order == "task":
        order = [(t, s_) for t in tasks for s_ in seeds]
    else:
        order = [(t, s_) for s_ in seeds for t in tasks]
    for task, seed in order:
        cfg = apply_variant(base_config(args, task, seed), args.variant)
        res["configs"][f"{args.variant}/{task}"] = {k: v for k, v in cfg.items() if k != "seed"}
        for mode in modes:
            key = (args.variant if mode != "rl" else "default", task, seed, mode)
            if key in done:
                print(f"skip {key}: already in {args.out / (NAME + '.json')}", flush=True)
                continue
            if args.deadline and time.time() - t_start > args.deadline * 60:
                res["stopped_early"] = f"deadline of {args.deadline} min reached before {key}"
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {key[0]} {task} seed {seed} {mode} (load {loadavg()})", flush=True)
            rd = root / key[0] / task / f"{mode}-s{seed}"
            out = run_one(cfg, mode, rd, smoke=smoke, ablation=(mode == "fst"))
            out.update(variant=key[0], task=task, seed=seed, loadavg_end=loadavg())
            res["runs"].append(out)
            done.add(key)
            res["analysis"] = analyse(res)
            save_result(args.out, NAME, res)
            ev = [round(r["reward"], 3) for r in out["records"] if r.get("kind") == "eval"]
            print(f"    {out['seconds']:.0f}s, val {ev}", flush=True)
    if res.get("stopped_early"):
        print(res["stopped_early"], flush=True)
    res["analysis"] = analyse(res)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["loadavg_end"] = loadavg()
    save_result(args.out, NAME, res)
    plot(res, plot_dir(args.out, smoke))
    return res


# ---------------------------------------------------------------------------- plots + markdown
COLORS = {"fst": "tab:blue", "rl": "tab:orange", "gepa": "tab:green"}


def plot(res: dict, out_dir: Path) -> list[Path]:
    pyplot = plt()
    an = res.get("analysis", {})
    keys = [k for k in an if k.startswith("default/")]
    paths = []
    if keys:
        fig, axes = pyplot.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
        for ax, key in zip(axes[0], keys):
            task = key.split("/", 1)[1]
            for mode in MODES:
                for r in res["runs"]:
                    if r["task"] == task and r["mode"] == mode and r["variant"] == "default":
                        xs, ys = eval_curve(r["records"])
                        ax.step(xs, ys, where="post", color=COLORS[mode], alpha=0.25, linewidth=0.8)
                c = an[key]["curves"].get(mode)
                if c:
                    xs, ys = c["mean"]
                    ax.step(xs, ys, where="post", color=COLORS[mode], linewidth=2,
                            label=f"{mode} (mean of {c['n']} seeds)")
            ax.set_title(f"{task}: running-max val reward (mean@1)")
            ax.set_xlabel("learning rollouts (RL + fast loop)")
            ax.set_ylabel("val reward")
            ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / "efficiency_curves.png"
        fig.savefig(p, dpi=110)
        pyplot.close(fig)
        paths.append(p)

        fig, axes = pyplot.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            task = key.split("/", 1)[1]
            for mode in ("rl", "fst"):
                pts = [p for r in res["runs"] if r["task"] == task and r["mode"] == mode and r["variant"] == "default"
                       for p in kl_points(r["records"], mode)]
                if pts:
                    ax.scatter([p[1] for p in pts], [p[0] for p in pts], color=COLORS[mode], s=16, label=mode)
            ax.set_title(f"{task}: val reward vs KL to base")
            ax.set_xlabel("KL(π ‖ π_base) per token (probe)")
            ax.set_ylabel("val reward")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / "efficiency_kl.png"
        fig.savefig(p, dpi=110)
        pyplot.close(fig)
        paths.append(p)

        abl_keys = [k for k in keys if an[k].get("ablation")]
        if abl_keys:
            fig, ax = pyplot.subplots(figsize=(6, 3.4))
            labels = list(an[abl_keys[0]]["ablation"])
            width = 0.8 / len(abl_keys)
            for i, key in enumerate(abl_keys):
                vals = [an[key]["ablation"][lab]["mean"] for lab in labels]
                ax.bar([j + i * width for j in range(len(labels))], vals, width=width, label=key.split("/", 1)[1])
            ax.set_xticks([j + width * (len(abl_keys) - 1) / 2 for j in range(len(labels))])
            ax.set_xticklabels([lab.replace("_weights+", "\n+").replace("_harness", "") for lab in labels], fontsize=7)
            ax.set_ylabel("val reward (mean over seeds)")
            ax.set_title("2×2 channel ablation at the end of FST")
            ax.legend(fontsize=7)
            fig.tight_layout()
            p = out_dir / "efficiency_ablation.png"
            fig.savefig(p, dpi=110)
            pyplot.close(fig)
            paths.append(p)
    return paths


def _ratio_cell(vals) -> str:
    vals = [v for v in vals if v is not None]
    return "–" if not vals else f"{median(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})"


def markdown(res: dict, plots_rel: str = "plots") -> str:
    an = res.get("analysis", {})
    out = []
    cmds = res.get("commands") or [res.get("command")]
    out.append("Commands: " + "; ".join(f"`{c}`" for c in cmds) + ".")
    for key, cfg in res.get("configs", {}).items():
        seeds = sorted({r["seed"] for r in res["runs"]})
        out.append(f"Config `{key}` (all modes; only `mode` differs; seeds {seeds}): "
                   f"`{ {k: v for k, v in cfg.items() if k not in ('runs_root',)} }`")
    if res.get("stopped_early"):
        out.append(f"**Stopped early**: {res['stopped_early']}. Everything below is from the runs that finished.")
    out.append("")
    rows = []
    for key, a in an.items():
        ms = a.get("samples_ratio_mean_curve") or {}
        rows.append({
            "variant/task": key, "seeds": len(a["seeds"]),
            "RL start→peak": _startpeak(a, "rl"), "FST start→peak": _startpeak(a, "fst"),
            "GEPA start→peak": _startpeak(a, "gepa"),
            "RL peak (mean curve)": ms.get("target"), "samples to it: RL": ms.get("base_samples"),
            "FST": ms.get("other_samples"), "ratio (mean curve)": ms.get("ratio"),
            "per-seed sample ratios": _ratio_cell(a["samples_ratio_seeds"]),
            "per-seed RL-step ratios": _ratio_cell(a["steps_ratio_seeds"]),
            "FST reached RL peak": f"{a['fst_reached_rl_peak']}/{len(a['seeds'])}",
            "KL ratio FST/RL at matched reward": _ratio_cell(a["kl_ratio_seeds"]),
        })
    out.append(table(rows))
    out.append("")
    out.append(f"Targets (paper): samples ratio ≥ {TARGET_SAMPLES}×, KL ratio ≤ {TARGET_KL}×. A ratio is "
               "RL's samples to its own peak divided by FST's samples to the same reward (> 1: FST is faster); "
               "'–' means FST never reached RL's peak or RL never rose above its start.")
    out.append("")
    arows = []
    for key, a in an.items():
        for mode, c in a.get("curves", {}).items():
            fa = c["asymptote"]
            arows.append({"variant/task": key, "mode": mode, "asymptote": fa.get("asymptote"),
                          "midpoint (samples)": fa.get("midpoint"), "slope": fa.get("slope"),
                          "fit ok": fa.get("ok")})
    if arows:
        out += ["Sigmoid fit (ScaleRL 4-parameter, pooled points of all seeds; with this few points the fit is "
                "a description, not a forecast; 'fit ok: no' means it fell back to the observed max):", "",
                table(arows), ""]
    ab = []
    for key, a in an.items():
        if a.get("ablation"):
            ab.append({"variant/task": key, **{k: f"{v['mean']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}]"
                                                for k, v in a["ablation"].items()}})
    if ab:
        out += ["2×2 channel ablation at the end of each FST run (mean over seeds [bootstrap 95% range]):", "",
                table(ab), ""]
    runs = res.get("runs", [])
    if runs:
        out += ["Per run:", ""]
        out.append(table([{"variant": r["variant"], "task": r["task"], "seed": r["seed"], "mode": r["mode"],
                           "val rewards (eval points)": " ".join(f"{x['reward']:.2f}" for x in r["records"]
                                                                if x.get("kind") == "eval"),
                           "learning rollouts": (eval_curve(r["records"])[0] or [0])[-1],
                           "RL steps": r["status"].get("rl_step"), "fast rounds": r["status"].get("fast_round"),
                           "final KL": _final_kl(r), "wall s": r["seconds"],
                           "load avg end": (r.get("loadavg_end") or [None])[0]} for r in runs]))
        out.append("")
    if not res.get("smoke"):
        out += [f"![efficiency curves]({plots_rel}/efficiency_curves.png)", "",
                f"![KL vs reward]({plots_rel}/efficiency_kl.png)", ""]
        if any(a.get("ablation") for a in an.values()):
            out.append(f"![channel ablation]({plots_rel}/efficiency_ablation.png)")
    return "\n".join(out)


def _startpeak(a: dict, mode: str) -> str:
    vals = [(d.get(f"{mode}_start"), d.get(f"{mode}_peak")) for d in a["per_seed"].values()
            if d.get(f"{mode}_start") is not None]
    if not vals:
        return "–"
    s = sum(v[0] for v in vals) / len(vals)
    p = sum(v[1] for v in vals) / len(vals)
    return f"{s:.2f}→{p:.2f}"


def _final_kl(r: dict):
    pts = kl_points(r["records"], r["mode"])
    return pts[-1][1] if pts else None


def merge(out_dir: Path, others: list[str]) -> dict:
    """Fold the runs of other result files (e.g. a second process on another task) into ``out_dir``'s."""
    res = load_result(out_dir, NAME) or {}
    res.setdefault("runs", [])
    have = {(r["variant"], r["task"], r["seed"], r["mode"]) for r in res["runs"]}
    for o in others:
        other = load_result(Path(o), NAME)
        if other is None:
            raise SystemExit(f"no {NAME}.json in {o}")
        for r in other.get("runs", []):
            if (r["variant"], r["task"], r["seed"], r["mode"]) not in have:
                res["runs"].append(r)
                have.add((r["variant"], r["task"], r["seed"], r["mode"]))
        res.setdefault("configs", {}).update(other.get("configs", {}))
        res.setdefault("commands", []).extend(c for c in other.get("commands", []) if c not in res["commands"])
        if other.get("stopped_early"):
            res["stopped_early"] = "; ".join(x for x in (res.get("stopped_early"), other["stopped_early"]) if x)
    res["analysis"] = analyse(res)
    save_result(out_dir, NAME, res)
    plot(res, plot_dir(out_dir, bool(res.get("smoke"))))
    return res


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                       help="only fold the runs in DIR/efficiency.json into --out's file (parallel processes)")
        p.add_argument("--tasks", default="math,codeio",
                       help="single-turn tasks by default: hover's multi-turn tool loop costs ~2x per rollout on CPU")
        p.add_argument("--seeds", default="0,1,2")
        p.add_argument("--modes", default=",".join(MODES))
        p.add_argument("--variant", default="default", choices=sorted(VARIANTS))
        p.add_argument("--cycles", type=int, default=3)
        p.add_argument("--steps", type=int, default=2, help="T: RL steps per cycle")
        p.add_argument("--K", type=int, default=2)
        p.add_argument("--G", type=int, default=4)
        p.add_argument("--prompts", type=int, default=2, help="problems per RL step")
        p.add_argument("--fast-train", type=int, default=3)
        p.add_argument("--fast-val", type=int, default=4)
        p.add_argument("--budget-passes", type=float, default=2.0)
        p.add_argument("--reflection-max-tokens", type=int, default=128)
        p.add_argument("--eval-size", type=int, default=16)
        p.add_argument("--max-new-tokens", type=int, default=48)
        p.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate (a few steps only: higher than "
                                                                 "the library default 2e-5)")
        p.add_argument("--warmup", type=int, default=0, help="warm-up steps (paper: 10, for runs of hundreds of "
                                                              "steps; with 6 steps it would keep the rate near 0)")
        p.add_argument("--order", choices=("task", "seed"), default="task",
                       help="outer loop: all seeds of a task first (default), or all tasks of a seed first")
        p.add_argument("--deadline", type=float, default=None, help="minutes; start no new run after it")
        p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    raw = sys.argv[1:] if argv is None else list(argv)
    args.tasks_given = any(a.startswith("--tasks") for a in raw)
    args.seeds_given = any(a.startswith("--seeds") for a in raw)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    res = merge(args.out, args.merge) if args.merge else run(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
