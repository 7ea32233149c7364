"""Would a longer reply have helped the local reflector? The policy's reflective proposals at two reply caps.

    python -m benchmarks.bench_reflection                      # embedded SmolLM2-135M, math, 8 minibatches
    python -m benchmarks.bench_reflection --max-tokens 128,512 --reps 8 --task math
    python -m benchmarks.bench_reflection --smoke              # tiny random model (CI pipeline check)

In the powered grid (issue 21) no reflective rewrite of the policy reflector was ever accepted, and a third of
its replies stopped at ``fast.reflection_max_tokens = 128`` inside their fenced block. This probe asks whether
that cap is the reason. Each repetition draws a fresh minibatch of training problems, rolls the seed harness
out on it through :class:`fst_lab.adapter.HarnessAdapter` (as a GEPA iteration does), builds the reflective
dataset, and asks for a rewrite of every evolvable component through the adapter's own ``propose_new_texts``
once per cap, with the reflection LM the fast loop builds by default (``fst-local/policy``: the policy,
greedy). Greedy decoding makes the pairs exact: the reply at the larger cap continues the one at the smaller
cap, so a reply cut off at 128 tokens either closes its fence within the larger cap or it does not.

Outcomes are the adapter's proposal statuses, classified as in the powered grid
(:func:`benchmarks.bench_powered.reflection_outcome`): ``valid harness`` (a proposal GEPA would score on its
minibatch), ``no change``, ``cut off at the token limit``, ``reply ended inside its fence``, ``no fenced block``,
``empty block``, ``broken harness``.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections import Counter

from benchmarks.common import bench_policy, loadavg, new_result, parse_args, save_result, table

NAME = "reflection"
MODULE = "benchmarks.bench_reflection"
VALID = "valid harness"


def probe(policy, task, seed_h, pool, *, comps: list[str], caps: list[int], reps: int, minibatch: int,
          max_new_tokens: int, seed: int, res: dict, out) -> list[dict]:
    """One row per (repetition, component, cap): the proposal's outcome, reply tokens and seconds."""
    from benchmarks.bench_powered import reflection_outcome
    from fst_lab.adapter import HarnessAdapter
    from fst_lab.lm import ReflectionLM, register_local_policy

    register_local_policy(policy, "policy")
    rng = random.Random(seed)
    cand = seed_h.to_candidate()
    rows: list[dict] = []
    for rep in range(reps):
        batch = rng.sample(pool, min(minibatch, len(pool)))
        lms = {cap: ReflectionLM("fst-local/policy", max_tokens=cap, num_retries=0) for cap in caps}
        adapter = HarnessAdapter(policy, task, seed_h, max_new_tokens=max_new_tokens, seed=seed + rep,
                                 bootstrap=False)
        ev = adapter.evaluate(batch, cand, capture_traces=True)
        data = adapter.make_reflective_dataset(cand, ev, comps)
        for comp in comps:
            for cap in caps:
                adapter.reflection_lm = lms[cap]
                before = lms[cap].stats
                t0 = time.perf_counter()
                adapter.propose_new_texts(cand, data, [comp])
                spent = lms[cap].stats.since(before)
                p = adapter.proposals[-1].to_json()
                outcome = VALID if p["status"] == "proposed" else reflection_outcome(p, None)
                rows.append({"rep": rep, "component": comp, "cap": cap, "outcome": outcome,
                             "reply_tokens": spent.completion_tokens, "seconds": round(time.perf_counter() - t0, 2),
                             "minibatch_reward": round(sum(ev.scores) / max(len(ev.scores), 1), 3),
                             "detail": p["detail"][:200]})
                print(f"  rep {rep} {comp} cap {cap}: {outcome} ({spent.completion_tokens} tokens)", flush=True)
        res["rows"] = rows
        save_result(out, NAME, res)
    return rows


def summarise(res: dict) -> dict:
    """Counts of outcomes per cap, and what became at each larger cap of the replies cut off at the smallest."""
    rows, caps = res.get("rows", []), res["settings"]["caps"]
    res["by_cap"] = {str(c): dict(sorted(Counter(r["outcome"] for r in rows if r["cap"] == c).items())) for c in caps}
    key = {(r["rep"], r["component"], r["cap"]): r for r in rows}
    lo = min(caps)
    cut = [(rep, comp) for (rep, comp, cap), r in key.items() if cap == lo and r["outcome"] ==
           "cut off at the token limit"]
    res["cut_at_smallest"] = {str(c): dict(sorted(Counter(key[(rep, comp, c)]["outcome"] for rep, comp in cut
                                                          if (rep, comp, c) in key).items()))
                              for c in caps if c != lo}
    return res


def markdown(res: dict, plots_rel: str = "plots") -> str:
    summarise(res)
    s = res["settings"]
    caps = s["caps"]
    out = [f"Command: `{res['command']}` — reflector {res['model']} (greedy, through LiteLLM's `fst-local` "
           f"provider), task {s['task']}, {s['reps']} minibatches of {s['minibatch']} training problems, components "
           f"{', '.join(s['components'])}, reply caps {', '.join(map(str, caps))} tokens.", ""]
    outcomes = sorted({o for d in res["by_cap"].values() for o in d})
    out.append(table([{"reply cap (tokens)": c, "proposals": sum(res["by_cap"][str(c)].values()),
                       **{o: res["by_cap"][str(c)].get(o, 0) for o in outcomes}} for c in caps]))
    for c, d in res.get("cut_at_smallest", {}).items():
        n = sum(d.values())
        if n:
            out += ["", f"Of the {n} replies cut off at {min(caps)} tokens, at {c} tokens: "
                        + ", ".join(f"{k} {v}" for k, v in d.items()) + "."]
    rows = res.get("rows", [])
    if rows:
        for c in caps:
            toks = [r["reply_tokens"] for r in rows if r["cap"] == c]
            secs = [r["seconds"] for r in rows if r["cap"] == c]
            out.append(f"- cap {c}: reply tokens median {sorted(toks)[len(toks) // 2]}, "
                       f"{sum(secs) / len(secs):.1f} s per reflection call (one thread, load "
                       f"{(res.get('loadavg_end') or [0])[0]:.1f}).")
    return "\n".join(out)


def run(args) -> dict:
    from fst_lab.harness import load_named
    from fst_lab.tasks import get_task

    smoke = args.smoke
    policy = bench_policy(smoke)
    task = get_task(args.task, level=1, seed=0)
    seed_h = load_named(args.task)
    caps = [8, 16] if smoke else [int(x) for x in args.max_tokens.split(",")]
    reps, minibatch = (1, 2) if smoke else (args.reps, args.minibatch)
    pool = task.examples("train", 4 if smoke else 64)
    comps = [c for c in seed_h.to_candidate() if c in seed_h.evolvable]
    res = new_result(NAME, MODULE, args.argv, smoke=smoke, model="tiny-llama (random init)" if smoke else
                     "smollm2-135m (the policy)", settings={"task": f"{args.task} level 1", "caps": caps, "reps": reps,
                                                           "minibatch": minibatch, "components": comps,
                                                           "max_new_tokens": args.max_new_tokens, "seed": 0})
    # Every cut-off reply logs a warning; quiet them for the probe only (the loggers are process-wide).
    quiet = [logging.getLogger(n) for n in ("fst_lab", "LiteLLM")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        probe(policy, task, seed_h, pool, comps=comps, caps=caps, reps=reps, minibatch=minibatch,
              max_new_tokens=args.max_new_tokens, seed=0, res=res, out=args.out)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    res["loadavg_end"] = loadavg()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summarise(res)
    save_result(args.out, NAME, res)
    return res


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--task", default="math")
        p.add_argument("--reps", type=int, default=8, help="minibatches (each: one proposal per component and cap)")
        p.add_argument("--minibatch", type=int, default=3, help="problems per reflective dataset (the grid's 3)")
        p.add_argument("--max-tokens", default="128,512", help="reply caps, comma-separated (the grid's is 128)")
        p.add_argument("--max-new-tokens", type=int, default=48, help="the policy's rollout length (the grid's 48)")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    res = run(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
