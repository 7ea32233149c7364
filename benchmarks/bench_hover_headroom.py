"""HoVer headroom: can the policy verify claims at all, with the seed harness or a hand-written one?

    python -m benchmarks.bench_hover_headroom --threads 1     # embedded policy, 64 claims, 2 harnesses (~6 min idle)
    python -m benchmarks.bench_hover_headroom --smoke         # tiny random model (pipeline check)

The powered grid's HoVer evaluations all sit near 0.5, what one constant answer scores on balanced labels.
This probe asks whether the fast weights alone could lift that: the base weights answer the grid's 64
validation claims (seed 0, level 1, greedy, as the grid evaluates) under the seed harness and under a
hand-written one whose system prompt and four balanced few-shot demos spell out the comparison ("Claim: born
in Kelby. Encyclopedia: born in Marrowford. Different."). Reported per harness: the reward, the answer
statistics every evaluation records (``fst_lab.evaluation.answer_stats``), accuracy on each gold label, and
the first transcripts.

A third row samples the seed harness at the grid's RL temperature (1.0, top-p 1, no top-k), as the slow loop
does, and a fourth at 0.7; each splits the claims with no parsable answer into those cut off at the 48-token
cap and those that finished without one: what the RL reward reads, next to what the greedy evaluation reads.
"""

from __future__ import annotations

import copy
import sys
import time

from benchmarks.common import REPO, new_result, parse_args, save_result, table

NAME = "hover_headroom"
MODULE = "benchmarks.bench_hover_headroom"


def _demo(claim: str, query: str, found: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": f"Claim: {claim}"},
            {"role": "assistant", "content": '{"name": "search", "arguments": {"query": "%s"}}' % query},
            {"role": "tool", "name": "search", "content": found},
            {"role": "assistant", "content": reply}]


def compare_harness(seed: dict) -> dict:
    """The seed harness with the comparison written out: a procedure in the system prompt, four demos (2 + 2)."""
    h = copy.deepcopy(seed)
    h["name"] = "hover-compare"
    h["system_prompt"] = (
        "You check one claim against an encyclopedia. First search the entity the claim is about. Then copy the "
        "claim's detail and the encyclopedia's detail side by side. If they are the same, the claim is SUPPORTED; "
        "if they differ, it is NOT_SUPPORTED.\nEnd with 'Answer: SUPPORTED' or 'Answer: NOT_SUPPORTED'.\n")
    h["few_shot"] = [
        _demo("Brava Tolis was born in Kelby.", "Brava Tolis",
              "Brava Tolis: a person. Born in Marrowford. Works as a baker.",
              "Claim: born in Kelby. Encyclopedia: born in Marrowford. Different.\nAnswer: NOT_SUPPORTED"),
        _demo("Dorvik Mills is headquartered in Pellby.", "Dorvik Mills",
              "Dorvik Mills: a company. Founded by Ena Rusk in 1901. Headquartered in Pellby.",
              "Claim: headquartered in Pellby. Encyclopedia: headquartered in Pellby. Same.\nAnswer: SUPPORTED"),
        _demo("Sorwick is a town in Almere.", "Sorwick", "Sorwick: a town in Dunmark. It lies on the Tesk River.",
              "Claim: a town in Almere. Encyclopedia: a town in Dunmark. Different.\nAnswer: NOT_SUPPORTED"),
        _demo("Hale Orrin works as a miller.", "Hale Orrin", "Hale Orrin: a person. Born in Pellby. Works as a miller.",
              "Claim: works as a miller. Encyclopedia: works as a miller. Same.\nAnswer: SUPPORTED"),
    ]
    return h


RL_TEMPERATURE = 1.0  # the powered grid's slow.temperature (and SlowConfig's default, the paper's)
LOWER_TEMPERATURE = 0.7  # a cooler sampler: how much of the no-answer share is the temperature's


def probe(policy, task, examples, harness, *, max_new_tokens: int, temperature: float = 0.0) -> dict:
    from fst_lab.evaluation import ANSWER_KEYS, mean_at_k
    from fst_lab.tasks.base import answer_key

    t0 = time.time()
    res, trajs = mean_at_k(policy, [("best", harness)], examples, task, k=1, max_new_tokens=max_new_tokens, seed=0,
                           temperature=temperature)
    by_gold: dict[str, list[float]] = {}
    for e, t in zip(examples, trajs):
        by_gold.setdefault(str(e.answer), []).append(t.reward)
    unparsed = [t for t in trajs if answer_key(task, t) is None]
    return {"harness": harness.name, "temperature": temperature, "reward": res["reward"],
            **{k: res.get(k) for k in ANSWER_KEYS},
            "unparsed_cut_off": sum(bool(t.truncated) for t in unparsed) / len(trajs),
            "unparsed_finished": sum(not t.truncated for t in unparsed) / len(trajs),
            "accuracy_by_gold": {g: sum(v) / len(v) for g, v in sorted(by_gold.items())},
            "seconds": round(time.time() - t0, 1), "transcripts": [t.transcript(600) for t in trajs[:3]]}


def markdown(res: dict, plots_rel: str = "plots") -> str:
    def no_answer(r: dict) -> str:
        if "unparsed_cut_off" not in r:  # a result written before the split was recorded
            return f"{r['answer_unparsed']:.0%}"
        return f"{r['answer_unparsed']:.0%} ({r['unparsed_cut_off']:.0%} cut off, {r['unparsed_finished']:.0%} finished)"

    rows = [{"harness": r["harness"],
             "sampling": ("greedy" if not r.get("temperature") else f"T={r['temperature']:g}"
                          + (" (as RL)" if r.get("temperature") == RL_TEMPERATURE else "")),
             "reward": f"{r['reward']:.3f}",
             "most common answer": f"{r['answer_top']} ({r['answer_top_share']:.0%})",
             **{f"right when {g}": f"{v:.2f}" for g, v in r["accuracy_by_gold"].items()},
             "no answer": no_answer(r), "a constant answer scores": f"{r['constant_floor']:.3f}"}
            for r in res["rows"]]
    out = [f"Command: `{res['command']}`; {res['n']} validation claims (seed {res['seed']}, level {res['level']}), "
           f"base weights, {res.get('max_new_tokens', 48)} new tokens per turn.", "", table(rows), ""]
    for r in res["rows"]:
        how = "greedy" if not r.get("temperature") else f"sampled at T={r['temperature']:g}"
        out += [f"First transcript, `{r['harness']}` ({how}):", "",
                "    " + r["transcripts"][0].replace("\n", "\n    "), ""]
    return "\n".join(out)


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    import yaml

    from fst_lab.harness import Harness
    from fst_lab.models import load_policy, tiny_policy
    from fst_lab.tasks import get_task

    n, level, seed = (4, 1, 0) if args.smoke else (64, 1, 0)
    task = get_task("hover", level=level, seed=seed, n_val=n)
    examples = task.examples("val", n)
    policy = tiny_policy(seed=0) if args.smoke else load_policy()
    seed_dict = yaml.safe_load((REPO / "harnesses" / "hover.yaml").read_text())
    mnt = 8 if args.smoke else 48
    res = new_result(NAME, MODULE, argv, smoke=args.smoke, n=n, level=level, seed=seed, max_new_tokens=mnt, rows=[])
    for h, temp in ((seed_dict, 0.0), (compare_harness(seed_dict), 0.0), (seed_dict, RL_TEMPERATURE),
                    (seed_dict, LOWER_TEMPERATURE)):
        row = probe(policy, task, examples, Harness.from_dict(h), max_new_tokens=mnt, temperature=temp)
        res["rows"].append(row)
        print(f"{row['harness']} (T={temp:g}): reward {row['reward']:.3f}, {row['answer_top']} "
              f"{row['answer_top_share']:.0%}, no answer {row['answer_unparsed']:.0%}, {row['seconds']} s", flush=True)
    save_result(args.out, NAME, res)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
