"""Continual learning: one run switching task hover → codeio → physics, FST vs RL-only, per-stage curves.

    python -m benchmarks.bench_continual            # embedded SmolLM2-135M, seed 0 (~15 min idle)
    python -m benchmarks.bench_continual --smoke    # tiny random model (CI pipeline check)

The paper's continual setting (switch every 200 RL steps, task-agnostic seed prompts), scaled to CPU:
``FSTConfig.stages`` = three stages of ``--stage-steps`` RL steps each, every stage starting from the
task-agnostic ``generic`` harness. FST and RL-only share the config (only ``mode`` differs).

Measured per stage: validation reward (greedy mean@1) at the start of the stage, after every cycle,
and at its end — the end point uses the stage's best harness as it was before the switch, on the
stage's own task; the per-step training reward of the slow loop; and, after the last stage,
*retention*: the final weights on all three tasks with the generic harness, next to the base weights
(forgetting shows up as final < base on an earlier task).
"""

from __future__ import annotations

import gc
import logging
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, load_result, loadavg, new_result, parse_args, plot_dir, plt, save_result, table

NAME = "continual"
MODULE = "benchmarks.bench_continual"
STAGES = ("hover", "codeio", "physics")
COLORS = {"fst": "tab:blue", "rl": "tab:orange"}


def config(args, seed: int) -> dict:
    if args.smoke:
        steps, T = 1, 1
        base = dict(population_size=2, num_generations=2, prompts_per_step=1, fast_train_size=2, fast_val_size=2,
                    eval_size=2, max_new_tokens=6, fast={"budget_passes": 1, "reflection_max_tokens": 16,
                                                         "reflection_minibatch_size": 1},
                    slow={"learning_rate": 1e-3, "kl_probe_size": 1})
    else:
        steps, T = args.stage_steps, args.steps
        base = dict(population_size=args.K, num_generations=args.G, prompts_per_step=args.prompts,
                    fast_train_size=args.fast_train, fast_val_size=args.fast_val, eval_size=args.eval_size,
                    max_new_tokens=args.max_new_tokens,
                    fast={"budget_passes": args.budget_passes, "reflection_max_tokens": args.reflection_max_tokens},
                    slow={"learning_rate": args.lr, "warmup_steps": args.warmup, "kl_probe_size": 4})
    return dict(task=STAGES[0], harness="generic", steps_per_cycle=T, cycles=len(STAGES) * max(1, steps // T),
                stages=[{"task": t, "level": 1, "steps": steps, "harness": "generic"} for t in STAGES],
                eval_k=1, seed=seed, checkpoint_every=10_000, save_rollouts=0, **base)


def _val(policy, harness, task, n: int, max_new_tokens: int | None, seed: int) -> float:
    from fst_lab.rollout import rollout

    trajs = rollout(policy, harness, task.examples("val", n), task, temperature=0.0, max_new_tokens=max_new_tokens,
                    seed=seed)
    return sum(t.reward for t in trajs) / max(1, len(trajs))


def run_one(cfg_dict: dict, mode: str, run_dir: Path, *, smoke: bool) -> dict:
    """Drive the session step by step so each stage gets an end-of-stage evaluation on its own task."""
    from fst_lab.config import FSTConfig
    from fst_lab.harness import load_named
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session
    from fst_lab.tasks import get_task

    cfg = FSTConfig.from_dict({**cfg_dict, "mode": mode, "runs_root": str(run_dir.parent), "run_name": run_dir.name})
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    s = Session(cfg, policy=tiny_policy(seed=0) if smoke else None, progress=False)
    plan = cfg.cycle_plan()
    evals: list[dict] = []

    def point(stage: int, task_name: str, reward: float, where: str):
        c = s.counters
        evals.append({"stage": stage, "task": task_name, "where": where, "rl_step": c["rl_step"],
                      "stage_step": c["stage_step"] if c["stage"] == stage else cfg.stage_list()[stage].steps,
                      "samples": c["samples_rl"] + c["samples_fast"], "reward": reward})

    for i, st in enumerate(cfg.stage_list()):
        point(i, st.task, s.evaluate()["reward"], "start")
        cycles = max(1, st.steps // cfg.steps_per_cycle)
        for c in range(cycles):
            switched = False
            for op in plan:
                if op == "p":
                    s.fast_step()
                    continue
                if s.counters["stage"] == i and s.counters["stage_step"] == st.steps - 1 and i < len(STAGES) - 1:
                    best, old_task = s.best_harness(), s.task  # the stage ends with this step
                    s.slow_step(1)
                    point(i, st.task, _val(s.policy, best, old_task, cfg.eval_size, cfg.max_new_tokens, cfg.seed),
                          "end")
                    switched = True
                else:
                    s.slow_step(1)
            if not switched:
                point(i, st.task, s.evaluate()["reward"], "end" if c == cycles - 1 else f"cycle {c + 1}")
    # retention: final and base weights on every stage's task, generic harness
    generic = load_named("generic")
    retention = {}
    for t in STAGES:
        task = get_task(t, level=1, seed=cfg.seed)
        retention[t] = {"final": _val(s.policy, generic, task, cfg.eval_size, cfg.max_new_tokens, cfg.seed),
                        "base": _val(s.base_policy(), generic, task, cfg.eval_size, cfg.max_new_tokens, cfg.seed)}
    slow = [{"rl_step": m["rl_step"], "stage": m.get("stage"), "task": m.get("task"), "reward": m.get("reward"),
             "kl_probe": m.get("kl_probe"), "samples": m.get("samples")} for m in s.metrics if m.get("kind") == "slow"]
    fast = [{"round": m.get("round"), "stage": m.get("stage"), "best_val": m.get("best_val"),
             "rollouts": m.get("rollouts"), "accepted": m.get("accepted")}
            for m in s.metrics if m.get("kind") == "fast"]
    out = {"mode": mode, "evals": evals, "slow": slow, "fast": fast, "retention": retention, "status": s.status(),
           "seconds": time.time() - t0, "run_dir": str(run_dir)}
    if getattr(s, "_slow", None) is not None and hasattr(s._slow, "close"):
        s._slow.close()
    s.close()
    s = None  # drop the policy, trainer and optimizer before the next run
    gc.collect()
    return out


def run(args) -> dict:
    logging.getLogger("fst_lab").setLevel(logging.WARNING)
    smoke = args.smoke
    prev = None if (smoke or args.fresh) else load_result(args.out, NAME)
    res = new_result(NAME, MODULE, args.argv, smoke=smoke,
                     model="tiny-llama (random init)" if smoke else "smollm2-135m")
    res["runs"] = list(prev.get("runs", [])) if prev else []
    root = (Path(args.out) / "runs") if smoke else REPO / "runs" / "bench-continual"
    for seed in args.seeds:
        cfg = config(args, seed)
        res["config"] = {k: v for k, v in cfg.items() if k != "seed"}
        for mode in ("rl", "fst"):
            if any(r["mode"] == mode and r["seed"] == seed for r in res["runs"]):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] continual seed {seed} {mode} (load {loadavg()})", flush=True)
            out = run_one(cfg, mode, root / f"{mode}-s{seed}", smoke=smoke)
            out.update(seed=seed, loadavg_end=loadavg())
            res["runs"].append(out)
            save_result(args.out, NAME, res)
            evs = [(e["task"], e["where"], round(e["reward"], 2)) for e in out["evals"]]
            print(f"    {out['seconds']:.0f}s; evals {evs}", flush=True)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(args.out, NAME, res)
    plot(res, plot_dir(args.out, smoke))
    return res


def plot(res: dict, out_dir: Path) -> list[Path]:
    pyplot = plt()
    runs = res.get("runs", [])
    if not runs:
        return []
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for r in runs:
        for stage in range(len(STAGES)):
            pts = [(e["rl_step"], e["reward"]) for e in r["evals"] if e["stage"] == stage]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[r["mode"]],
                        alpha=0.9 if r["seed"] == runs[0]["seed"] else 0.4,
                        label=f"{r['mode']}" if stage == 0 and r["seed"] == runs[0]["seed"] else None)
    steps = [e["rl_step"] for e in runs[0]["evals"] if e["where"] == "start"][1:]
    for x in steps:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    for stage, t in enumerate(STAGES):
        starts = [e["rl_step"] for e in runs[0]["evals"] if e["stage"] == stage]
        if starts:
            ax.text(starts[0] + 0.1, 0.97, t, fontsize=8, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel("RL step")
    ax.set_ylabel("val reward (stage's own task)")
    ax.set_title("Per-stage validation reward")
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in runs:
        xs = [m["rl_step"] for m in r["slow"]]
        ys = [m["reward"] for m in r["slow"]]
        ax.plot(xs, ys, marker=".", color=COLORS[r["mode"]], alpha=0.8 if r["seed"] == runs[0]["seed"] else 0.35,
                label=r["mode"] if r["seed"] == runs[0]["seed"] else None)
    for x in steps:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("RL step")
    ax.set_ylabel("train reward (G rollouts × problems)")
    ax.set_title("Per-step training reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "continual_stages.png"
    fig.savefig(p, dpi=110)
    pyplot.close(fig)
    return [p]


def markdown(res: dict, plots_rel: str = "plots") -> str:
    cfg = res.get("config", {})
    out = [f"Command: `{res['command']}` — model {res['model']}; config (only `mode` differs): `{cfg}`.", ""]
    rows = []
    for r in res.get("runs", []):
        for stage, t in enumerate(STAGES):
            ev = [e for e in r["evals"] if e["stage"] == stage]
            tr = [m["reward"] for m in r["slow"] if m.get("stage") == stage and m.get("reward") is not None]
            if not ev:
                continue
            rows.append({"seed": r["seed"], "mode": r["mode"], "stage": f"{stage + 1}: {t}",
                         "val start": ev[0]["reward"], "val end": ev[-1]["reward"],
                         "val max": max(e["reward"] for e in ev),
                         "train reward (mean of stage)": sum(tr) / len(tr) if tr else None,
                         "RL steps": len(tr)})
    out.append(table(rows))
    out += ["", "Retention after the last stage (generic harness, greedy, val): final weights vs base weights.", ""]
    rrows = []
    for r in res.get("runs", []):
        row = {"seed": r["seed"], "mode": r["mode"]}
        for t, v in r["retention"].items():
            row[f"{t} final"] = v["final"]
            row[f"{t} base"] = v["base"]
        row["wall s"] = r["seconds"]
        rrows.append(row)
    out.append(table(rrows))
    if not res.get("smoke"):
        out += ["", f"![continual per-stage curves]({plots_rel}/continual_stages.png)"]
    return "\n".join(out)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--seeds", default="0")
        p.add_argument("--stage-steps", type=int, default=4, help="RL steps per stage")
        p.add_argument("--steps", type=int, default=2, help="T: RL steps per cycle")
        p.add_argument("--K", type=int, default=2)
        p.add_argument("--G", type=int, default=4)
        p.add_argument("--prompts", type=int, default=2)
        p.add_argument("--fast-train", type=int, default=3)
        p.add_argument("--fast-val", type=int, default=4)
        p.add_argument("--budget-passes", type=float, default=2.0)
        p.add_argument("--reflection-max-tokens", type=int, default=128)
        p.add_argument("--eval-size", type=int, default=8)
        p.add_argument("--max-new-tokens", type=int, default=48)
        p.add_argument("--lr", type=float, default=1e-4)
        p.add_argument("--warmup", type=int, default=0)
        p.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    res = run(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
