"""Consolidation: how much of the harness's gain do the weights keep once the harness is gone?

    python -m benchmarks.bench_consolidate --runs runs/demo-A,runs/demo-B     # consolidate finished FST runs
    python -m benchmarks.bench_consolidate --make-runs 0,1,2 --task math       # make demo-sized FST runs first
    python -m benchmarks.bench_consolidate --smoke                             # CI: tiny model, 2 problems

For each FST run (an evolved population and trained weights in its run directory):

1. **consolidated weights**: the trained weights, then ``--steps`` consolidation steps
   (:class:`fst_lab.consolidate.Consolidator`: on-policy reverse KL to the trained policy under the best
   evolved harness, student under the minimal harness ``--student``, fresh LoRA on the merged trained
   weights, frozen teacher snapshot);
2. **the channel ablation** {base, trained, consolidated} x {minimal, seed, evolved}: mean reward on
   ``--eval-size`` validation problems (greedy), plus prompt tokens per query for each harness;
3. **share of the harness's gain kept without it** = (consolidated+minimal - base+minimal) /
   (base+evolved - base+minimal), the evolved harness's reward before (trained) and after
   (consolidated), and the held-out per-token KL of the student to the teacher before/after.

Writes ``benchmarks/results/consolidate.json`` (smoke: ``test-artifacts/bench-smoke/``) after every run,
with the load average next to every figure, and prints the markdown section (:func:`markdown`).
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, loadavg, new_result, parse_args, save_result, table  # noqa: E402

NAME = "consolidate"
MODULE = "benchmarks.bench_consolidate"
WEIGHTS = ("base", "trained", "consolidated")
HARNESSES = ("minimal", "seed", "evolved")


# ---------------------------------------------------------------------------- loading a finished run
def load_run_parts(run_dir: str | Path):
    """(config dict, task, seed harness, best evolved harness, base policy, trained policy) of a run."""
    from fst_lab.models import load_policy
    from fst_lab.runs import load_run
    from fst_lab.tasks import get_task

    view = load_run(run_dir)
    cfg = view.config
    seed = view.seed_harness()
    pop = view.population()
    scores = view.state.get("population_scores", {}) or {}
    from fst_lab.consolidate import evolved_teachers

    best = evolved_teachers(pop, seed, "best", scores)[0]
    task = get_task(cfg.get("task", "math"), level=int(cfg.get("level", 1)), seed=int(cfg.get("seed", 0)))
    base = load_policy(cfg.get("model"))
    trained = load_policy(cfg.get("model"))
    ck = view.latest_checkpoint()
    if ck is None:
        raise SystemExit(f"{run_dir}: no checkpoint: the run has no trained weights")
    if (ck / "adapter_config.json").exists():
        from peft import PeftModel

        trained.model = PeftModel.from_pretrained(trained.model, str(ck)).merge_and_unload()
    else:
        from safetensors.torch import load_file

        trained.model.load_state_dict(load_file(str(ck / "model.safetensors")), strict=False)
        trained.model.tie_weights()
    return cfg, task, seed, best, base, trained


def make_run(seed: int, task: str, runs_root: Path) -> Path:
    """A demo-sized FST run (same settings as ``fst-lab demo``) with ``seed``."""
    from fst_lab.config import demo_config
    from fst_lab.session import Session

    cfg = demo_config(task, seed=seed, runs_root=str(runs_root),
                      run_name=f"consolidate-{task}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    with Session(cfg, progress=False) as s:
        s.run()
        return s.run_dir


# ---------------------------------------------------------------------------- the measurement
def grid(policies: dict, harnesses: dict, task, examples, max_new_tokens: int) -> dict:
    """Mean reward (greedy) of every weights x harness cell, and prompt tokens per query per harness."""
    from fst_lab.consolidate import prompt_ids
    from fst_lab.rollout import rollout

    out: dict = {"reward": {}, "prompt_tokens": {}, "load": {}}
    tok = next(iter(policies.values())).tokenizer
    for hn, h in harnesses.items():
        out["prompt_tokens"][hn] = statistics.fmean(len(prompt_ids(tok, h, ex)) for ex in examples)
    for wn, pol in policies.items():
        for hn, h in harnesses.items():
            trajs = rollout(pol, h, examples, task, n_samples=1, temperature=0.0, max_new_tokens=max_new_tokens,
                            seed=0)
            out["reward"][f"{wn}+{hn}"] = statistics.fmean(t.reward for t in trajs)
            out["load"][f"{wn}+{hn}"] = loadavg()
    return out


def measure(label: str, task, seed, evolved, base, trained, *, student: str, steps: int, eval_size: int,
            max_new_tokens: int, ccfg: dict) -> dict:
    """Consolidate ``trained`` (a copy) and run the 3x3 ablation; one result row."""
    from fst_lab.consolidate import ConsolidateConfig, Consolidator, minimal_harness

    t0 = time.time()
    minimal = minimal_harness(seed, student)
    cpol = copy.deepcopy(trained)
    cfg = ConsolidateConfig(student=student, max_new_tokens=max_new_tokens, **ccfg)
    c = Consolidator(cpol, task, [evolved], minimal, cfg)
    kl_before = c.heldout_kl()
    recs = c.step(steps)
    kl_after = c.heldout_kl()
    t_cons = time.time() - t0
    exs = task.examples("val", eval_size)
    g = grid({"base": base, "trained": trained, "consolidated": c.policy},
             {"minimal": minimal, "seed": seed, "evolved": evolved}, task, exs, max_new_tokens)
    r = g["reward"]
    gain = r["base+evolved"] - r["base+minimal"]
    kept = (r["consolidated+minimal"] - r["base+minimal"]) / gain if abs(gain) > 1e-12 else None
    return {"run": label, "student": student, "steps": steps, "consolidate_config": cfg.to_dict(),
            "teacher": evolved.id, "minimal": minimal.id, "seed_harness": seed.id, "eval_size": len(exs),
            **g, "share_kept": kept, "harness_gain": gain,
            "tokens_saved_per_query": g["prompt_tokens"]["evolved"] - g["prompt_tokens"]["minimal"],
            "evolved_before": r["trained+evolved"], "evolved_after": r["consolidated+evolved"],
            "heldout_kl_before": kl_before, "heldout_kl_after": kl_after,
            "train_kl": [x.get("kl_teacher") for x in recs], "student_reward": [x.get("reward") for x in recs],
            "consolidate_seconds": t_cons, "seconds": time.time() - t0, "load_end": loadavg()}


def rl_distill(label: str, task, seed, population, trained, *, student: str, steps: int, coef: float,
               eval_size: int, max_new_tokens: int, rl_seed: int = 0) -> dict:
    """RL + distillation vs plain RL at equal samples: from the trained weights, ``steps`` more RL steps on the
    run's population (K=2, G=4, 2 problems per step: the demo's slow loop), with lambda = ``coef`` and with
    lambda = 0; then reward under the minimal and the evolved harness."""
    from fst_lab.consolidate import DistillTerm, minimal_harness
    from fst_lab.slow import SlowConfig, SlowLearner

    minimal = minimal_harness(seed, student)
    exs = task.examples("val", eval_size)
    pop = list(population)[:2] if len(population) >= 2 else list(population) * 2
    out = {"run": label, "steps": steps, "coef": coef, "population": [h.id for h in pop], "arms": {}}
    for lam in (0.0, coef):
        t0 = time.time()
        cfg = SlowConfig(num_generations=4, population_size=2, prompts_per_step=2, max_completion_length=max_new_tokens,
                         learning_rate=1e-4, warmup_steps=0, kl_probe_size=0, seed=rl_seed)
        learner = SlowLearner(copy.deepcopy(trained), task, pop, cfg)
        term = DistillTerm(learner, minimal, lam) if lam else None
        learner.extra_loss = term
        with learner:
            recs = learner.step(steps)
            g = grid({"w": learner.policy}, {"minimal": minimal, "evolved": pop[0]}, task, exs, max_new_tokens)
        out["arms"][f"lambda={lam:g}"] = {
            "reward_minimal": g["reward"]["w+minimal"], "reward_evolved": g["reward"]["w+evolved"],
            "rollouts": sum(int(r.get("rollouts", 8)) for r in recs), "train_reward": [r.get("reward") for r in recs],
            "distill_kl": list(term.values) if term else [], "seconds": time.time() - t0, "load": loadavg()}
    return out


# ---------------------------------------------------------------------------- report
TITLE = "Consolidation (the evolved harness distilled into the weights)"


def aggregate(rows: list[dict]) -> list[dict]:
    """Per task: mean ± sd (over rows) of the share kept, the evolved harness before/after, the held-out KL
    before/after and the prompt tokens saved per query."""
    def ms(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "–"
        return f"{fmt(statistics.fmean(xs))} ± {fmt(statistics.stdev(xs))}" if len(xs) > 1 else fmt(xs[0])

    out = []
    for task in dict.fromkeys(r.get("task") or "math" for r in rows):
        rs = [r for r in rows if (r.get("task") or "math") == task]
        out.append({"task": task, "runs": len(rs), "FST runs": len({r.get("fst_run", r["run"].split(" ")[0]) for r in rs}),
                    "share kept": ms([r["share_kept"] for r in rs]),
                    "base+min → cons+min": f"{ms([r['reward']['base+minimal'] for r in rs])} → "
                                           f"{ms([r['reward']['consolidated+minimal'] for r in rs])}",
                    "evolved before → after": f"{ms([r['evolved_before'] for r in rs])} → {ms([r['evolved_after'] for r in rs])}",
                    "held-out KL before → after": f"{ms([r['heldout_kl_before'] for r in rs])} → "
                                                  f"{ms([r['heldout_kl_after'] for r in rs])}",
                    "tokens saved/query": ms([r["tokens_saved_per_query"] for r in rs])})
    return out


def markdown(res: dict, plots_rel: str | None = None) -> str:
    """The doc section's body (``benchmarks.run_all`` adds the title): per-run 3x3 tables, prompt tokens,
    share kept, before/after, RL + distillation vs plain RL."""
    rows = res.get("runs", [])
    cmds = res.get("commands") or [res.get("command", "")]
    lines = ["Commands: " + "; ".join(f"`{c}`" for c in cmds) + (" (smoke)" if res.get("smoke") else ""), ""]
    lines += [*res.get("notes", []), ""] if res.get("notes") else []
    summary = []
    for r in rows:
        summary.append({"run": r["run"], "student": r["student"], "steps": r["steps"],
                        "base+min": r["reward"]["base+minimal"], "base+evolved": r["reward"]["base+evolved"],
                        "cons+min": r["reward"]["consolidated+minimal"], "share kept": r["share_kept"],
                        "evolved before": r["evolved_before"], "evolved after": r["evolved_after"],
                        "KL before": r["heldout_kl_before"], "KL after": r["heldout_kl_after"],
                        "tokens saved/query": r["tokens_saved_per_query"], "load": (r.get("load_end") or ["?"])[0]})
    lines += [table(summary) if summary else "(no consolidation runs)", ""]
    agg = aggregate(rows)
    if agg:
        lines += ["Per task, mean ± sd over runs (FST seed × consolidation seed):", "", table(agg), ""]
    for rd in res.get("rl_distill", []):
        rows_rd = [{"arm": k, **{kk: v[kk] for kk in ("reward_minimal", "reward_evolved", "rollouts")},
                    "load": (v.get("load") or ["?"])[0]} for k, v in rd["arms"].items()]
        lines += [f"RL + distillation vs plain RL at equal samples ({rd['run']}, {rd['steps']} RL steps from the "
                  "trained weights on the run's population):", "", table(rows_rd), ""]
    for r in rows:
        lines += [f"### {r['run']} (student `{r['student']}`, {r['steps']} steps, {r['eval_size']} val problems, "
                  f"greedy)", ""]
        cells = [{"weights": w, **{h: r["reward"][f"{w}+{h}"] for h in HARNESSES}} for w in WEIGHTS]
        cells.append({"weights": "prompt tokens/query", **{h: r["prompt_tokens"][h] for h in HARNESSES}})
        lines += [table(cells, ["weights", *HARNESSES]), "",
                  f"share of the harness gain kept without it: {fmt(r['share_kept'])} (gain {fmt(r['harness_gain'])}); "
                  f"held-out student->teacher KL {fmt(r['heldout_kl_before'])} -> {fmt(r['heldout_kl_after'])}; "
                  f"consolidation {r['consolidate_seconds']:.0f} s, load {r.get('load_end')}", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--runs", default="", help="comma-separated finished FST run directories")
        p.add_argument("--make-runs", default="", help="comma-separated seeds: make demo-sized FST runs first")
        p.add_argument("--task", default="math")
        p.add_argument("--runs-root", default="runs")
        p.add_argument("--student", default="short", choices=["none", "seed", "short"])
        p.add_argument("--steps", type=int, default=8)
        p.add_argument("--eval-size", type=int, default=16)
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--lr", type=float, default=3e-4)
        p.add_argument("--prompts-per-step", type=int, default=4)
        p.add_argument("--samples-per-prompt", type=int, default=2)
        p.add_argument("--rl-distill-steps", type=int, default=0,
                       help="also compare RL + distillation (lambda=--rl-coef) with plain RL for this many steps")
        p.add_argument("--rl-coef", type=float, default=0.1)
        p.add_argument("--seed", type=int, default=0, help="consolidation seed (problem order and sampling)")
        p.add_argument("--skip-consolidate", action="store_true", help="only the RL + distillation comparison")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    res = new_result(NAME, MODULE, argv, smoke=args.smoke, runs=[], rl_distill=[])
    ccfg = {"learning_rate": args.lr, "prompts_per_step": args.prompts_per_step,
            "samples_per_prompt": args.samples_per_prompt, "eval_size": min(8, args.eval_size), "seed": args.seed}
    if args.smoke:
        row, parts = _smoke_row(ccfg)
        res["runs"].append(row)
        if args.rl_distill_steps:
            task, seed, evolved, trained = parts
            res["rl_distill"].append(rl_distill("smoke", task, seed, [evolved, seed], trained, student="short",
                                                steps=args.rl_distill_steps, coef=args.rl_coef, eval_size=2,
                                                max_new_tokens=4))
    else:
        runs = [r for r in args.runs.split(",") if r]
        for s in [int(x) for x in args.make_runs.split(",") if x]:
            runs.append(str(make_run(s, args.task, Path(args.runs_root))))
        for run in runs:
            cfg, task, seed, best, base, trained = load_run_parts(run)
            if not args.skip_consolidate:
                row = measure(f"{Path(run).name} (consolidation seed {args.seed})", task, seed, best, base, trained,
                              student=args.student, steps=args.steps,
                              eval_size=args.eval_size, max_new_tokens=args.max_new_tokens, ccfg=ccfg)
                row["task"] = cfg.get("task")
                res["runs"].append(row)
                save_result(args.out, NAME, res)
            if args.rl_distill_steps:
                from fst_lab.runs import load_run

                pop = [best] + [h for h in load_run(run).population() if h.id != best.id]
                res["rl_distill"].append(rl_distill(Path(run).name, task, seed, pop, trained, student=args.student,
                                                    steps=args.rl_distill_steps, coef=args.rl_coef,
                                                    eval_size=args.eval_size, max_new_tokens=args.max_new_tokens))
                save_result(args.out, NAME, res)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(args.out, NAME, res)
    print(f"## {TITLE}\n\n{markdown(res)}")
    return res


def _smoke_row(ccfg: dict) -> dict:
    """Tiny random Llama as base; 'trained' = a copy; a hand-made 'evolved' harness: the pipeline only."""
    from fst_lab.harness import Harness, load_named
    from fst_lab.models import tiny_policy
    from fst_lab.tasks import get_task

    task = get_task("math", level=1, seed=0)
    seed = load_named("math")
    d = seed.to_dict(with_lineage=False)
    d["system_prompt"] = seed.system_prompt + "\nCheck each step before answering."
    d["lineage"] = {"parents": [seed.id], "origin": "gepa", "round": 1}
    evolved = Harness.from_dict(d)
    base = tiny_policy(seed=0)
    trained = copy.deepcopy(base)
    ccfg = {**ccfg, "prompts_per_step": 2, "samples_per_prompt": 1, "eval_size": 2, "lora_r": 4}
    row = measure("smoke", task, seed, evolved, base, trained, student="short", steps=1, eval_size=2,
                  max_new_tokens=4, ccfg=ccfg)
    return row, (task, seed, evolved, trained)


if __name__ == "__main__":
    main()
