"""Overhead of the slow loop: one ``SlowLearner.step`` vs one step of a plain TRL ``GRPOTrainer`` script.

    python benchmarks/bench_slow_overhead.py            # full: embedded SmolLM2-135M, 3 measured pairs
    python benchmarks/bench_slow_overhead.py --smoke    # CI: tiny random model, 1 pair, no warm-up

Same model, LoRA, loss (CISPO, tau=4, beta=0.001), G, problems per step and sampling on both sides. Both
produce exactly ``--tokens`` new tokens per completion (``min_new_tokens = max_new_tokens``) so random
completion lengths don't decide the comparison, and both sides use one harness (the SlowLearner's K
slots all hold the seed harness) so prompt lengths match. The plain trainer is driven one step at a
time by the same pause-between-steps mechanism as the SlowLearner, so the two alternate step by step
(ABBA order) under the same machine conditions. The per-step KL probe is off for the comparison and
timed on its own. Target: ratio <= 1.05.

Writes ``benchmarks/results/slow_overhead.json`` (smoke: ``test-artifacts/bench-smoke/``; ``--out``) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class SteppedTrainer:
    """Runs ``trainer.train()`` in a thread, parked before every optimizer step (the plain-TRL side)."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.trainer, self.idle, self.go = trainer, threading.Event(), threading.Semaphore(0)
        self.logs: list[dict] = []
        outer = self

        class Gate(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer.idle.set()
                outer.go.acquire()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    outer.logs.append(dict(logs))

        trainer.add_callback(Gate())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None
        self.thread.start()
        self.idle.wait()

    def _run(self):
        try:
            self.trainer.train()
        except BaseException as e:  # pragma: no cover - reported by step()
            self.error = e
        finally:
            self.idle.set()

    def step(self) -> dict:
        self.idle.clear()
        self.go.release()
        self.idle.wait()
        if self.error:
            raise self.error
        return self.logs[-1]


def build(args):
    import torch

    from fst_lab.backends import lora_config
    from fst_lab.harness import Harness
    from fst_lab.models import load_policy, tiny_policy
    from fst_lab.rollout import Trajectory
    from fst_lab.slow import SlowConfig, SlowLearner
    from fst_lab.tasks import get_task

    torch.manual_seed(0)
    make = (lambda: tiny_policy(seed=0)) if args.smoke else (lambda: load_policy(args.model))
    task = get_task("math", level=1, seed=0)
    seed = Harness.load(REPO / "harnesses" / "math.yaml")
    cfg = SlowConfig(num_generations=args.G, population_size=args.K, prompts_per_step=args.prompts,
                     max_completion_length=args.tokens, warmup_steps=0, learning_rate=2e-5, kl_probe_size=0,
                     seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-slow-"))

    ours_pol = make()
    ours_pol.model.generation_config.min_new_tokens = args.tokens  # fixed-length completions
    ours = SlowLearner(ours_pol, task, [seed] * args.K, cfg, output_dir=tmp / "ours")
    ours.step(0)  # set up train() (optimizer, dataloader) now, as SteppedTrainer does for the plain side

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    exs = task.examples("train")
    rows = []
    for ex in exs:
        messages, _ = seed.render(ex.inputs)
        rows.append({"prompt": messages, "example_id": ex.id})
    by_id = {ex.id: ex for ex in exs}

    def task_reward(prompts, completions, example_id, **_):
        out = []
        for comp, eid in zip(completions, example_id):
            text = comp[0]["content"] if isinstance(comp, list) else comp
            traj = Trajectory(example_id=eid, harness_id=seed.id, sample=0,
                              messages=[{"role": "assistant", "content": text}], n_prompt_messages=0,
                              final_text=text)
            out.append(float(task.score(by_id[eid], traj).reward))
        return out

    plain_pol = make()
    from fst_lab.backends import device_args

    targs = GRPOConfig(
        output_dir=str(tmp / "plain"), per_device_train_batch_size=args.prompts * args.G,
        gradient_accumulation_steps=1, num_generations=args.G, max_completion_length=args.tokens,
        generation_kwargs={"min_new_tokens": args.tokens}, temperature=1.0, top_p=1.0, top_k=0,
        loss_type="cispo", epsilon_high=4.0, beta=0.001, learning_rate=2e-5, warmup_steps=0,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=0.0, max_steps=10**6, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0, gradient_checkpointing=False,
        disable_dropout=True, log_completions=False, **device_args("transformers"))
    plain = GRPOTrainer(model=plain_pol.model, reward_funcs=[task_reward], args=targs,
                        train_dataset=Dataset.from_list(rows), processing_class=plain_pol.tokenizer,
                        peft_config=lora_config(cfg))
    from transformers.trainer_callback import PrinterCallback

    plain.remove_callback(PrinterCallback)
    return ours, SteppedTrainer(plain)


def run(args) -> dict:
    import torch

    t0 = time.time()
    load0 = os.getloadavg()
    ours, plain = build(args)
    build_s = time.time() - t0

    def time_ours():
        t = time.perf_counter()
        rec = ours.step(1)[0]
        return time.perf_counter() - t, rec.get("step_time")

    def time_plain():
        t = time.perf_counter()
        rec = plain.step()
        return time.perf_counter() - t, rec.get("step_time")

    def say(msg):
        print(f"[bench {time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    say(f"built both trainers in {build_s:.1f}s")
    for i in range(args.warmup):  # allocator / first-call warm-up, not measured
        say(f"warm-up {i + 1}: ours {time_ours()[0]:.1f}s, plain {time_plain()[0]:.1f}s")
    pairs = []
    for i in range(args.pairs):
        order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
        res = {}
        for side in order:
            res[side] = time_ours() if side == "ours" else time_plain()
        say(f"pair {i + 1}/{args.pairs} ({'-'.join(order)}): ours {res['ours'][0]:.1f}s, "
            f"plain {res['plain'][0]:.1f}s")
        pairs.append({"order": "-".join(order), "ours_s": res["ours"][0], "plain_s": res["plain"][0],
                      "ours_trl_step_time": res["ours"][1], "plain_trl_step_time": res["plain"][1],
                      "ratio": res["ours"][0] / res["plain"][0]})
    # The per-step KL probe (off above): the first call also computes the start weights' side (cached).
    probe_n = 4
    ours.config.kl_probe_size = probe_n
    ours._probe_examples = None
    t = time.perf_counter()
    ours.kl_probe("probe")
    ours.kl_probe(None)
    probe_first_s = time.perf_counter() - t
    t = time.perf_counter()
    ours.kl_probe("probe")
    ours.kl_probe(None)
    probe_s = time.perf_counter() - t
    ours.close()

    med_o = statistics.median(p["ours_s"] for p in pairs)
    med_p = statistics.median(p["plain_s"] for p in pairs)
    geo = statistics.geometric_mean([p["ratio"] for p in pairs])
    import peft
    import transformers
    import trl

    return {
        "mode": "smoke" if args.smoke else "full",
        "model": "tiny-llama (random init)" if args.smoke else args.model,
        "settings": {"G": args.G, "K": args.K, "prompts_per_step": args.prompts, "new_tokens": args.tokens,
                     "completions_per_step": args.G * args.prompts, "lora_r": 16, "loss": "cispo",
                     "beta": 0.001, "warmup_steps_unmeasured": args.warmup, "pairs": args.pairs},
        "pairs": pairs,
        "median_ours_s": med_o, "median_plain_s": med_p, "ratio_of_medians": med_o / med_p,
        "ratio_geomean": geo, "target": 1.05, "meets_target": geo <= 1.05,
        "kl_probe_seconds": probe_s, "kl_probe_first_call_seconds": probe_first_s, "kl_probe_examples": probe_n, "build_seconds": build_s,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_start": load0, "loadavg_end": os.getloadavg(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"Slow-loop overhead ({res['mode']}, {res['model']}; G={s['G']}, K={s['K']}, "
             f"{s['prompts_per_step']} problems/step, {s['new_tokens']} new tokens)", "",
             "| pair | order | SlowLearner.step (s) | plain TRL step (s) | ratio |",
             "|---:|---|---:|---:|---:|"]
    for i, p in enumerate(res["pairs"]):
        lines.append(f"| {i + 1} | {p['order']} | {p['ours_s']:.2f} | {p['plain_s']:.2f} | {p['ratio']:.3f} |")
    lines += ["", f"median: {res['median_ours_s']:.2f} s vs {res['median_plain_s']:.2f} s -> "
                  f"ratio {res['ratio_of_medians']:.3f}; geometric mean of paired ratios {res['ratio_geomean']:.3f} "
                  f"(target <= {res['target']}); per-step KL probe (2 x {res['kl_probe_examples']} examples, off in the "
                  f"steps above): {res['kl_probe_seconds']:.2f} s ({res['kl_probe_first_call_seconds']:.2f} s on "
                  f"the first call, which caches the start weights' side); load average {res['machine']['loadavg_start'][0]:.1f}"
                  f" -> {res['machine']['loadavg_end'][0]:.1f} on {res['machine']['cpus']} CPUs"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 1 pair, no warm-up (for CI)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=None, help="measured (ours, plain) step pairs (full: 3)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps per side first (full: 1)")
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2, help="problems per step")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per completion (full: 32, smoke: 8)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/slow_overhead.json; "
                                                 "smoke: test-artifacts/bench-smoke/slow_overhead.json)")
    args = ap.parse_args(argv)
    args.pairs = args.pairs or (1 if args.smoke else 3)
    args.warmup = (0 if args.smoke else 1) if args.warmup is None else args.warmup
    args.tokens = args.tokens or (8 if args.smoke else 32)
    # smoke results never land next to the committed full results (benchmarks/common.py convention)
    args.out = args.out or str(REPO / "test-artifacts" / "bench-smoke" / "slow_overhead.json" if args.smoke
                               else REPO / "benchmarks" / "results" / "slow_overhead.json")
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
