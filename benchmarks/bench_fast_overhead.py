"""Overhead of the fast loop: one ``fst_lab.fast.fast_step`` vs a plain ``gepa.optimize`` call.

    python -m benchmarks.bench_fast_overhead            # embedded SmolLM2-135M, 3 measured pairs
    python -m benchmarks.bench_fast_overhead --smoke    # tiny random model, 1 pair (CI pipeline check)
    python -m benchmarks.bench_fast_overhead --reflector local   # the policy itself reflects (slower, noisier)

Both sides use the same adapter class (:class:`fst_lab.fast.HarnessAdapter`, same arguments), the same
seed harness, train/val examples, GEPA budget (``max_metric_calls``), minibatch size, selection
strategy and GEPA seed. The fast step's extras are what is measured: re-scoring the population under
the current weights (here a population of one, whose rollouts are handed to GEPA as its seed
evaluation, so no extra rollouts), lineage bookkeeping, the Pareto pick of K, the result JSON and the
progress callbacks.

To make the two sides do *identical* work, rollouts are greedy and the reflection LM is a scripted,
deterministic callable (it returns a new, valid text on every call) — so the ratio measures fst_lab's
plumbing, not a reflector's sampling luck. ``--reflector local`` uses the policy as reflector instead
(what the offline default does); its generation time dilutes the overhead ratio towards 1.
Pairs alternate order (ours first, then plain first) because other jobs share the cores. Target ≤ 1.05×.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import loadavg, new_result, parse_args, save_result, table

NAME = "fast_overhead"
MODULE = "benchmarks.bench_fast_overhead"
TARGET = 1.05


class ScriptedReflector:
    """A deterministic stand-in for the reflection LM: a fresh valid text for whichever component is asked."""

    def __init__(self, inputs: list[str]):
        self.inputs = inputs
        self.calls = 0

    def __call__(self, prompt) -> str:
        self.calls += 1
        n = self.calls
        text = prompt if isinstance(prompt, str) else str(prompt)
        if "str.format template" in text:
            new = f"Problem ({n}):\n" + "\n".join("{" + i + "}" for i in self.inputs)
        elif "must be YAML" in text:
            new = "- - role: user\n    content: What is 2 + 2?\n  - role: assistant\n    content: |-\n" \
                  f"      2 + 2 = 4 (demo {n}).\n      Answer: 4"
        else:
            new = (f"You are a careful assistant (revision {n}). Work in short steps and end with a final line "
                   "'Answer: <answer>'.")
        return f"```\n{new}\n```"


class _Quiet:
    """GEPA logger that drops messages (GEPA's default prints every line to stdout)."""

    def log(self, message: str) -> None:
        pass


def _adapter_kwargs(cfg, train):
    return dict(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, bootstrap=cfg.bootstrap,
                bootstrap_every=cfg.bootstrap_every, max_demos=cfg.max_demos, demo_min_reward=cfg.demo_min_reward,
                demo_example_ids=[ex.id for ex in train])


def run_ours(policy, task, seed_h, train, val, cfg, reflector, workdir: Path, rnd: int) -> dict:
    from fst_lab.fast import fast_step

    t0 = time.perf_counter()
    res = fast_step(policy, task, [seed_h], train, val, config=cfg, round=rnd, reflection_lm=reflector,
                    run_dir=workdir / f"ours_{rnd}", progress=False)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "metric_calls": res.metric_calls, "rollouts": res.rollouts, "proposals": len(res.proposal_log),
            "accepted": res.accepted, "candidates": len(res.candidates),
            "best_val": res.val_scores[res.best_id], "candidate_texts": [h.to_candidate() for h in res.candidates]}


def run_plain(policy, task, seed_h, train, val, cfg, reflector, workdir: Path, rnd: int) -> dict:
    """What a user would write with GEPA alone: the same adapter, the same budget and settings."""
    import gepa

    from fst_lab.fast import HarnessAdapter

    t0 = time.perf_counter()
    adapter = HarnessAdapter(policy, task, seed_h, seed=cfg.seed + 1000 * rnd, reflection_lm=reflector,
                             **_adapter_kwargs(cfg, train))
    result = gepa.optimize(
        seed_candidate=seed_h.to_candidate(), trainset=list(train), valset=list(val), adapter=adapter,
        candidate_selection_strategy=cfg.candidate_selection, reflection_minibatch_size=cfg.reflection_minibatch_size,
        max_metric_calls=cfg.budget(len(train), len(val)), use_merge=cfg.use_merge,
        run_dir=str(workdir / f"plain_{rnd}"), logger=_Quiet(), display_progress_bar=False, seed=cfg.seed + rnd,
        raise_on_exception=False, track_best_outputs=False)
    dt = time.perf_counter() - t0
    best = max(range(len(result.candidates)), key=lambda i: result.val_aggregate_scores[i])
    return {"seconds": dt, "metric_calls": int(result.total_metric_calls or 0), "rollouts": adapter.rollouts,
            "proposals": len(adapter.proposals),
            "accepted": len(result.candidates) - 1, "candidates": len(result.candidates),
            "best_val": result.val_aggregate_scores[best], "candidate_texts": list(result.candidates)}


def run(args) -> dict:
    from fst_lab.fast import FastConfig
    from fst_lab.harness import load_named
    from fst_lab.models import load_policy, tiny_policy
    from fst_lab.tasks import get_task

    logging.getLogger("fst_lab").setLevel(logging.WARNING)
    smoke = args.smoke
    policy = tiny_policy(seed=0) if smoke else load_policy()
    task = get_task(args.task, level=1, seed=0)
    seed_h = load_named(args.task)
    n_train, n_val = (2, 2) if smoke else (args.train, args.val)
    train, val = task.examples("train", n_train), task.examples("val", n_val)
    budget = (n_val + 2 * 2) if smoke else args.budget
    cfg = FastConfig(population_size=4, max_metric_calls=budget, reflection_minibatch_size=2 if smoke else 3,
                     temperature=0.0, max_new_tokens=8 if smoke else args.max_new_tokens, seed=0,
                     reflection_lm="fst-local/policy")
    pairs = 1 if smoke else args.pairs
    res = new_result(NAME, MODULE, args.argv, smoke=smoke, target=TARGET,
                     model="tiny-llama (random init)" if smoke else "smollm2-135m",
                     settings={"task": f"{args.task} level 1", "train": n_train, "val": n_val,
                               "max_metric_calls": budget, "minibatch": cfg.reflection_minibatch_size,
                               "max_new_tokens": cfg.max_new_tokens, "rollout_temperature": 0.0,
                               "bootstrap": cfg.bootstrap, "bootstrap_every": cfg.bootstrap_every,
                               "population_in": 1, "population_out_K": cfg.population_size,
                               "reflector": args.reflector, "pairs": pairs, "warmup": not smoke, "seed": 0})

    def reflector():
        if args.reflector == "local":
            from fst_lab.lm import ReflectionLM, register_local_policy

            register_local_policy(policy, "bench")
            return ReflectionLM("fst-local/bench", max_tokens=cfg.reflection_max_tokens)
        return ScriptedReflector(list(seed_h.inputs))

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fast-") as tmp:
        work = Path(tmp)
        if not smoke:  # warm-up: first-call costs (tokenizer caches, GEPA imports) hit neither side
            run_plain(policy, task, seed_h, train, val, cfg, reflector(), work, 0)
        for i in range(pairs):
            order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
            out = {}
            for side in order:
                fn = run_ours if side == "ours" else run_plain
                out[side] = fn(policy, task, seed_h, train, val, cfg, reflector(), work, i + 1)
            same = out["ours"]["candidate_texts"] == out["plain"]["candidate_texts"]
            row = {"pair": i + 1, "order": " then ".join(order), "ours_s": out["ours"]["seconds"],
                   "plain_s": out["plain"]["seconds"], "ratio": out["ours"]["seconds"] / out["plain"]["seconds"],
                   "same_candidates": same, "loadavg": (loadavg() or [None])[0]}
            for side in ("ours", "plain"):
                for k in ("metric_calls", "rollouts", "proposals", "candidates", "best_val"):
                    row[f"{side}_{k}"] = out[side][k]
            rows.append(row)
            print(f"  pair {i + 1} ({row['order']}): ours {row['ours_s']:.2f}s plain {row['plain_s']:.2f}s "
                  f"ratio {row['ratio']:.3f} same candidates {same}", flush=True)
            res["pairs"] = rows
            save_result(args.out, NAME, res)
    summarise(res)
    res["loadavg_end"] = loadavg()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(args.out, NAME, res)
    return res


def summarise(res: dict) -> dict:
    """Aggregate the paired ratios that exist (a run stopped early still yields its finished pairs)."""
    rows = res.get("pairs", [])
    if not rows:
        return res
    ratios = [r["ratio"] for r in rows]
    res["ratio_geomean"] = statistics.geometric_mean(ratios)
    res["ratio_median"] = statistics.median(ratios)
    res["median_ours_s"] = statistics.median(r["ours_s"] for r in rows)
    res["median_plain_s"] = statistics.median(r["plain_s"] for r in rows)
    res["meets_target"] = res["ratio_geomean"] <= TARGET
    return res


def markdown(res: dict, plots_rel: str = "plots") -> str:
    if "ratio_geomean" not in res:
        summarise(res)
    s = res["settings"]
    out = [f"Command: `{res['command']}` — model {res['model']}, task {s['task']}, {s['train']} train / {s['val']} "
           f"val examples, GEPA budget {s['max_metric_calls']} metric calls, minibatch {s['minibatch']}, "
           f"{s['max_new_tokens']} new tokens, greedy rollouts, reflector: {s['reflector']}, "
           f"bootstrap {'on' if s['bootstrap'] else 'off'} (every {s['bootstrap_every']}), population 1 → K="
           f"{s['population_out_K']}, seed {s['seed']}.", ""]
    out.append(table(res.get("pairs", []), ["pair", "order", "ours_s", "plain_s", "ratio", "ours_metric_calls",
                                            "plain_metric_calls", "ours_rollouts", "plain_rollouts",
                                            "ours_candidates", "plain_candidates", "same_candidates", "loadavg"],
                     ["pair", "order", "fast_step s", "gepa.optimize s", "ratio", "metric calls (ours)",
                      "metric calls (plain)", "rollouts (ours)", "rollouts (plain)", "candidates (ours)",
                      "candidates (plain)", "same candidates", "load avg"]))
    if not res.get("finished") and res.get("pairs"):
        out += ["", f"This run stopped after {len(res['pairs'])} of the pairs its command asked for; the "
                    "aggregate below is over the finished pairs."]
    if "ratio_geomean" in res:
        ok = "✅" if res["meets_target"] else "❌"
        out += ["", f"Geometric mean of paired ratios: **{res['ratio_geomean']:.3f}×** (median "
                    f"{res['ratio_median']:.3f}; target ≤ {TARGET}× {ok}); medians {res['median_ours_s']:.2f} s "
                    f"vs {res['median_plain_s']:.2f} s."]
    return "\n".join(out)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--task", default="math")
        p.add_argument("--pairs", type=int, default=3)
        p.add_argument("--train", type=int, default=6)
        p.add_argument("--val", type=int, default=6)
        p.add_argument("--budget", type=int, default=24, help="GEPA max_metric_calls (both sides)")
        p.add_argument("--max-new-tokens", type=int, default=48)
        p.add_argument("--reflector", choices=("scripted", "local"), default="scripted")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    res = run(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
