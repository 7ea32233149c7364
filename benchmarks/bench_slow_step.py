"""Where one RL step of the demo goes: time and GFLOP/s by phase, fp32 vs bf16, next to this CPU's matmul peak.

    python -m benchmarks.bench_slow_step --threads 2                  # demo config, fp32 and bf16 (~6 min idle)
    python -m benchmarks.bench_slow_step --compare-tree /tmp/old      # + whole steps vs another checkout, ABBA
    python -m benchmarks.bench_slow_step --smoke                      # tiny random model (pipeline check)

The step is the demo's (``fst-lab demo``): embedded SmolLM2-135M, LoRA r=16, math level 1, K=2 harnesses,
G=4, 2 problems per step (8 rollouts), 64 new tokens, beta=0.001 (a reference forward), KL probe on 4
examples. Two learners, one per precision, step alternately (A B A B...), so background load hits them
alike. Phases are timed by hooks (benchmark-only; nothing in fst_lab is changed to measure it):

- ``prefill`` / ``decode``: model forwards inside the rollouts with more than one / exactly one new
  position; ``rollout other``: the rest of the rollouts (rendering, tokenising, sampling, tools);
- ``reward``: the task's scorer; ``train forward`` / ``reference forward``: TRL's log-prob forwards
  with / without gradient; ``backward``; ``optimizer``; ``KL probe``; ``checkpoint`` (``save_state``).

FLOPs are counted exactly for every ``nn.Linear`` call (2 x rows x in x out, LoRA included, padding
included since it is computed); attention's own matmuls are not counted (a few % at these lengths), nor is
the LM head inside TRL's fused log-prob head (it multiplies by the weight directly, not through the module;
on CPU it scores only the completion positions, ~1/6 of the sequence: ``score_completions_only_on_cpu``).
Backward is counted as 1x the training forward's linear FLOPs for LoRA (activation gradients; the
frozen weights get none) and 2x for full fine-tuning. The matmul peak is ``torch.mm`` at the model's
shapes in the same process and thread count.

Also measured: how far the sampler's and the trainer's numerics disagree (the importance ratio
pi_train / pi_sample on the sampled tokens; ~1 means the rollouts are on-policy for the loss), for the
sampling path (KV-cached, token by token, as ``generate`` runs) vs the training path (one forward over
the whole sequence, as TRL runs), in each precision and crossed.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import loadavg, new_result, parse_args, save_result

NAME = "slow_step"
MODULE = "benchmarks.bench_slow_step"
PHASES = ("prefill", "decode", "rollout other", "reward", "train forward", "reference forward", "backward",
          "optimizer", "KL probe", "step other")


# ---------------------------------------------------------------------------- matmul peak
def matmul_peak(reps: int = 5) -> list[dict]:
    """GFLOP/s of torch.mm at SmolLM2-135M's shapes, float32 and bfloat16, median of ``reps``."""
    import torch

    shapes = [("train: 1536x576 . 576x1536", 1536, 576, 1536), ("lm head: 512x576 . 576x49152", 512, 576, 49152),
              ("decode: 8x576 . 576x1536", 8, 576, 1536)]
    rows = []
    for label, m, k, n in shapes:
        row = {"shape": label}
        for dt in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
            inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timing
            torch.mm(a, b)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(inner):
                    torch.mm(a, b)
                ts.append(time.perf_counter() - t0)
            row[str(dt).replace("torch.", "")] = 2 * m * k * n * inner / statistics.median(ts) / 1e9
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- instrumentation
class PhaseMeter:
    """Seconds and linear-layer FLOPs per phase of a SlowLearner step (hooks + wrappers, benchmark-only)."""

    def __init__(self, learner):
        import torch

        self.learner = learner
        self.seconds = {p: 0.0 for p in PHASES}
        self.flops = {p: 0.0 for p in PHASES}
        self.tokens = {p: 0 for p in PHASES}
        self._local = threading.local()
        self._handles = []
        self.lora = learner.config.lora
        model = learner.trainer.model
        base = model.get_base_model() if self.lora else model
        self._handles.append(base.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(base.register_forward_hook(self._post, with_kwargs=True))
        for name, mod in base.named_modules():
            # The LoRA adapters' own linears are left unhooked (a hook there would send generation back to PEFT's
            # forward, see fst_lab.models.lean_lora_forward); at rank 16 they are ~5% of a projection's FLOPs.
            if isinstance(mod, torch.nn.Linear) and ".lora_" not in f".{name}":
                self._handles.append(mod.register_forward_hook(self._linear))
        self._wrap(learner, "_run_rollouts", "rollout")
        task = learner.task
        self._wrap(task, "score", "reward")
        tr = learner.trainer
        orig_lp = tr._get_per_token_logps_and_entropies  # private, benchmark-only

        def logps(*a, **kw):
            phase = "train forward" if torch.is_grad_enabled() else "reference forward"
            return self._timed(phase, orig_lp, *a, **kw)

        tr._get_per_token_logps_and_entropies = logps
        orig_bw = tr.accelerator.backward
        tr.accelerator.backward = lambda *a, **kw: self._timed("backward", orig_bw, *a, **kw)
        self._wrap(learner, "kl_probe", "KL probe")
        from transformers import TrainerCallback

        meter = self

        class _Opt(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kw):
                meter._opt_t0 = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                meter.seconds["optimizer"] += time.perf_counter() - meter._opt_t0

        tr.add_callback(_Opt())

    def _phase(self) -> str | None:
        return getattr(self._local, "phase", None)

    def _timed(self, phase, fn, *a, **kw):
        outer = self._phase()
        self._local.phase = phase
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            dt = time.perf_counter() - t0
            self._local.phase = outer
            self.seconds[phase] += dt
            if outer == "rollout" and phase == "reward":
                self.seconds["rollout other"] -= dt
            if outer is not None and outer != "rollout":
                self.seconds[outer] -= dt  # nested: count the inner phase only

    def _wrap(self, obj, name, phase):
        orig = getattr(obj, name)

        def wrapped(*a, **kw):
            if phase == "rollout":
                t0 = time.perf_counter()
                self._local.phase = "rollout"
                try:
                    return orig(*a, **kw)
                finally:
                    self._local.phase = None
                    self.seconds["rollout other"] += time.perf_counter() - t0
            return self._timed(phase, orig, *a, **kw)

        setattr(obj, name, wrapped)

    def _pre(self, mod, args, kwargs):
        if self._phase() == "rollout":
            ids = kwargs.get("input_ids")
            sub = "decode" if ids is not None and ids.shape[1] == 1 else "prefill"
            self._local.sub = sub
            self._local.t0 = time.perf_counter()
            if ids is not None:
                self.tokens[sub] += int(ids.numel())
        elif self._phase() in ("train forward", "reference forward", "KL probe"):
            ids = kwargs.get("input_ids")
            if ids is not None:
                self.tokens[self._phase()] += int(ids.numel())

    def _post(self, mod, args, kwargs, out):
        if self._phase() == "rollout" and getattr(self._local, "sub", None):
            dt = time.perf_counter() - self._local.t0
            self.seconds[self._local.sub] += dt
            self.seconds["rollout other"] -= dt
            self._local.sub = None

    def _linear(self, mod, args, out):
        x = args[0]
        rows = x.numel() // x.shape[-1]
        f = 2.0 * rows * mod.in_features * mod.out_features
        phase = self._phase()
        if phase == "rollout":
            phase = getattr(self._local, "sub", None) or "rollout other"
        if phase in self.flops:
            self.flops[phase] += f

    def reset(self):
        for d in (self.seconds, self.flops, self.tokens):
            for k in d:
                d[k] = 0 * d[k]

    def snapshot(self, total: float) -> dict:
        sec = dict(self.seconds)
        flops = dict(self.flops)
        flops["backward"] = flops["train forward"] * (1 if self.lora else 2)
        sec["step other"] = max(0.0, total - sum(v for k, v in sec.items() if k != "step other"))
        return {"seconds": sec, "gflop": {k: v / 1e9 for k, v in flops.items()}, "tokens": dict(self.tokens),
                "total_s": total}


# ---------------------------------------------------------------------------- importance ratio
def ratio_check(learner, n_seq: int = 4) -> dict:
    """pi_train / pi_sample on sampled tokens: KV-cached token-by-token (sampler) vs one full forward
    (trainer), each under fp32 or bf16 autocast. Returns mean |ratio - 1| and max |log ratio| per pair."""
    import torch

    model = learner.trainer.model
    eps = [e for e in learner.last_episodes if not e.multi_turn][:n_seq]

    def ctx(p):
        return torch.autocast("cpu", dtype=torch.bfloat16) if p == "bf16" else contextlib.nullcontext()

    def sample_path(e, p):  # as generate runs it: prefill the prompt, then one cached token at a time
        out = []
        with torch.no_grad(), ctx(p):
            o = model(input_ids=torch.tensor([e.prompt_ids]), use_cache=True)
            cache, logits = o.past_key_values, o.logits[0, -1]
            for t in e.completion_ids:
                out.append(torch.log_softmax(logits.float() / learner.config.temperature, -1)[t])
                o = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
                cache, logits = o.past_key_values, o.logits[0, -1]
        return torch.stack(out)

    def train_path(e, p):  # as TRL runs it: one forward over prompt + completion
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        n = len(e.completion_ids)
        with torch.no_grad(), ctx(p):
            logits = model(input_ids=ids).logits[0, -n - 1:-1]
        return torch.log_softmax(logits.float() / learner.config.temperature, -1).gather(
            -1, torch.tensor(e.completion_ids)[:, None])[:, 0]

    was = model.training
    model.eval()
    try:
        lp = {(kind, p): torch.cat([f(e, p) for e in eps]) for kind, f in (("sample", sample_path),
                                                                              ("train", train_path))
              for p in ("fp32", "bf16")}
    finally:
        model.train(was)
    res = {}
    for s, t in (("fp32", "fp32"), ("bf16", "bf16"), ("fp32", "bf16"), ("bf16", "fp32")):
        d = lp[("train", t)] - lp[("sample", s)]
        res[f"sample {s} / train {t}"] = {"mean_abs_ratio_minus_1": float((d.exp() - 1).abs().mean()),
                                          "max_abs_log_ratio": float(d.abs().max()), "tokens": int(d.numel())}
    return res


# ---------------------------------------------------------------------------- the run
def demo_setup(smoke: bool):
    from fst_lab.harness import load_named
    from fst_lab.tasks import get_task

    task = get_task("math", level=1, seed=0)
    seed = load_named("math")
    variant = seed.with_components({"system_prompt": seed.system_prompt.rstrip() +
                                    "\nCheck the arithmetic once before the final line."}, origin="manual")
    return task, [seed, variant]


def slow_cfg(precision: str, smoke: bool):
    from fst_lab.slow import SlowConfig

    return SlowConfig(num_generations=4, population_size=2, prompts_per_step=2,
                      max_completion_length=8 if smoke else 64, learning_rate=1e-4, warmup_steps=0,
                      kl_probe_size=1 if smoke else 4, seed=0, precision=precision)


def breakdown(args, res: dict) -> None:
    import torch

    from benchmarks.common import bench_policy
    from fst_lab.slow import SlowLearner

    task, pop = demo_setup(args.smoke)
    precisions = ("fp32", "bf16")
    learners, meters = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-slow-step-"))
    for p in precisions:
        learners[p] = SlowLearner(bench_policy(args.smoke), task, pop, slow_cfg(p, args.smoke),
                                  output_dir=tmp / p)
        meters[p] = PhaseMeter(learners[p])
    steps = {p: [] for p in precisions}
    try:
        for p in precisions:  # warm-up step (first-call setup), not counted
            learners[p].step(1)
        for rep in range(args.steps):
            for p in (precisions if rep % 2 == 0 else precisions[::-1]):
                meters[p].reset()
                la = loadavg()
                t0 = time.perf_counter()
                rec = learners[p].step(1)[-1]
                snap = meters[p].snapshot(time.perf_counter() - t0)
                snap.update(loadavg=la, tokens_model=rec["tokens"], reward=rec["reward"], loss=rec["loss"])
                steps[p].append(snap)
                print(f"  {p} step {rep + 1}: {snap['total_s']:.1f}s (load {la[0] if la else '?'})", flush=True)
        for p in precisions:
            t0 = time.perf_counter()
            learners[p].save_state(tmp / f"ckpt-{p}")
            for s in steps[p]:
                s["seconds"]["checkpoint"] = time.perf_counter() - t0
            res.setdefault("ratio", {})[p] = ratio_check(learners[p], n_seq=2 if args.smoke else 4)
    finally:
        for lr in learners.values():
            lr.close()
    res["steps"] = steps
    res["torch_threads"] = torch.get_num_threads()


# ---------------------------------------------------------------------------- old vs new checkout (ABBA)
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from fst_lab.harness import load_named
from fst_lab.models import load_policy
from fst_lab.slow import SlowConfig, SlowLearner
from fst_lab.tasks import get_task
steps, precision = int(sys.argv[2]), sys.argv[3]
task = get_task("math", level=1, seed=0)
seed = load_named("math")
pop = [seed, seed.with_components({"system_prompt": seed.system_prompt.rstrip() +
       "\nCheck the arithmetic once before the final line."}, origin="manual")]
kw = dict(num_generations=4, population_size=2, prompts_per_step=2, max_completion_length=64,
          learning_rate=1e-4, warmup_steps=0, seed=0)
if precision != "-":
    kw["precision"] = precision
with SlowLearner(load_policy(), task, pop, SlowConfig(**kw)) as lr:
    lr.step(1)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter(); lr.step(1); ts.append(time.perf_counter() - t0)
print("RESULT " + json.dumps(ts))
"""


def compare_trees(args, res: dict) -> None:
    """Whole RL steps, this checkout vs ``--compare-tree`` (A B B A ... processes, load recorded)."""
    here = Path(__file__).resolve().parents[1]
    trees = {"old": (Path(args.compare_tree), "-"), "new": (here, args.new_precision)}
    out = {k: [] for k in trees}
    order = []
    for pair in range(args.pairs):
        order += ["old", "new"] if pair % 2 == 0 else ["new", "old"]
    for name in order:
        tree, prec = trees[name]
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads or 2)}
        la = loadavg()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.threads or 2), str(args.ab_steps), prec],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"{name} child failed: {proc.stderr[-2000:]}")
        ts = json.loads(line[0][7:])
        out[name].append({"step_s": ts, "loadavg_before": la, "loadavg_after": loadavg()})
        print(f"  {name}: steps {[round(t, 1) for t in ts]} (load {la[0] if la else '?'})", flush=True)
    med = {k: statistics.median([t for r in v for t in r["step_s"]]) for k, v in out.items()}
    res["compare"] = {"trees": {k: str(v[0]) for k, v in trees.items()}, "new_precision": args.new_precision,
                      "order": order, "runs": out, "median_step_s": med, "speedup": med["old"] / med["new"]}


# ---------------------------------------------------------------------------- report
def markdown(res: dict, plots_rel: str = "plots") -> str:
    lines = [f"Command: `{res['command']}` — torch threads {res.get('torch_threads')}.", ""]
    if res.get("peak"):
        lines += ["| matmul (torch.mm) | float32 GFLOP/s | bfloat16 GFLOP/s |", "|---|---|---|"]
        lines += [f"| {r['shape']} | {r['float32']:.0f} | {r['bfloat16']:.0f} |" for r in res["peak"]]
        lines.append("")
    steps = res.get("steps") or {}
    if steps:
        precs = list(steps)
        head = "| phase | " + " | ".join(f"{p} s | {p} GFLOP | {p} GFLOP/s" for p in precs) + " |"
        lines += [head, "|---|" + "---|---|---|" * len(precs)]
        for ph in (*PHASES, "checkpoint"):
            cells = []
            for p in precs:
                s = statistics.median([x["seconds"].get(ph, 0.0) for x in steps[p]])
                g = statistics.median([x["gflop"].get(ph, 0.0) for x in steps[p]])
                cells.append(f"{s:.2f} | {g:.1f} | " + (f"{g / s:.0f}" if g and s > 0.05 else "–"))
            lines.append(f"| {ph} | " + " | ".join(cells) + " |")
        tot = [f"{statistics.median([x['total_s'] for x in steps[p]]):.1f}" for p in precs]
        lines.append("| **step (median)** | " + " | ".join(f"**{t}** | | " for t in tot) + " |")
        loads = sorted({round(x["loadavg"][0], 1) for p in precs for x in steps[p] if x.get("loadavg")})
        lines += ["", f"Load average (1 min) at the measured steps: {loads}."]
    if res.get("ratio"):
        lines += ["", "| learner | sampler path / trainer path | mean abs(ratio − 1) | max abs(log ratio) |",
                  "|---|---|---|---|"]
        for lp, d in res["ratio"].items():
            for k, v in d.items():
                lines.append(f"| {lp} | {k} | {v['mean_abs_ratio_minus_1']:.2e} | {v['max_abs_log_ratio']:.2e} |")
    if res.get("compare"):
        c = res["compare"]
        lines += ["", f"Whole RL steps, {c['trees']['old']} vs this checkout (precision {c['new_precision']}), "
                  f"processes in order {' '.join(c['order'])}: median {c['median_step_s']['old']:.1f}s → "
                  f"{c['median_step_s']['new']:.1f}s per step, **{c['speedup']:.2f}×**."]
        if c.get("command"):
            lines.append(f"Command: `{c['command']}`.")
        for k, runs in c["runs"].items():
            for r in runs:
                lines.append(f"- {k}: {[round(t, 1) for t in r['step_s']]} s, load before/after "
                             f"{r['loadavg_before'][0] if r['loadavg_before'] else '?'}/"
                             f"{r['loadavg_after'][0] if r['loadavg_after'] else '?'}")
    labels = {"compare_1_thread": "At 1 thread", "compare_1_thread_session7": "At 1 thread, session 7",
              "compare_before_kv_cache_bf16": "Before the bf16 KV cache",
              "compare_before_bf16_storage": "Before the frozen linears were stored in bf16",
              "compare_before_openmp_release": "Before the stepper released its OpenMP pools"}
    for key, label in labels.items():  # further ABBA comparisons merged into the result, each with its command
        b = res.get(key)
        if b:
            note = "; ".join(x for x in (b.get("note") or b.get("machine_load_note"), f"`{b.get('command')}`") if x)
            lines += ["", f"{label} ({note}): median {b['median_step_s']['old']:.1f}s → "
                      f"{b['median_step_s']['new']:.1f}s per step, **{b['speedup']:.2f}×**."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--steps", type=int, default=2, help="measured steps per precision (after 1 warm-up)")
        p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the phase breakdown")
        p.add_argument("--compare-tree", default=None, help="another checkout (e.g. git worktree of the old main)")
        p.add_argument("--pairs", type=int, default=2, help="ABBA: old/new process pairs")
        p.add_argument("--ab-steps", type=int, default=2, help="measured steps per process (after 1 warm-up)")
        p.add_argument("--new-precision", default="auto", help="precision of this checkout in the comparison (auto: the default)")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    res = new_result(NAME, MODULE, argv, smoke=args.smoke)
    import torch

    res["torch_threads"] = torch.get_num_threads()
    res["peak"] = matmul_peak(reps=2 if args.smoke else 5)
    res["loadavg_start"] = loadavg()
    if args.breakdown:
        breakdown(args, res)
    if args.compare_tree:
        compare_trees(args, res)
    res["loadavg_end"] = loadavg()
    save_result(args.out, NAME, res)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
