"""Rollout throughput: ``fst_lab.rollout`` vs plain ``model.generate`` vs llama.cpp on the same GGUF.

    python -m benchmarks.bench_rollout             # embedded SmolLM2-135M, batch 1 and 8 (~10 min idle)
    python -m benchmarks.bench_rollout --smoke     # tiny random model, a few tokens (CI pipeline check)

What is compared (same prompts, same batch, greedy, same ``max_new_tokens``):

- ``fst_lab``: :func:`fst_lab.rollout.rollout` with the task's seed harness — chat rendering, batched
  generation through :meth:`Policy.generate_text`, tool parsing, scoring; everything a rollout does.
- ``plain``: the same rendered prompt strings, tokenised and passed to ``model.generate`` directly.
- ``llama.cpp``: llama-cpp-python on the embedded GGUF (Q4_1, the file the policy is converted from),
  one stream at a time (its high-level API has no multi-sequence batching), fresh KV cache per
  prompt. Optional and benchmark-only: build it with the flags at the top of docs/BENCHMARKS.md; when
  it is missing the result says "not installed".

Tokens/s counts generated tokens up to and including EOS. fst_lab and plain produce identical token ids
(checked); llama.cpp runs quantised weights, so its greedy text may differ (its own token count is used).
Timings alternate between methods (A B C, C B A, ...) because other jobs share the machine's cores.

Also measured: the share of a rollout's wall time spent inside ``model.generate`` (the rest is ours:
rendering, tokenising, decoding, tool calls, scoring), single- and multi-turn (hover, with tools), and
a profile of one batch-1 rollout (cProfile by function + torch.profiler by operator).
"""

from __future__ import annotations

import contextlib
import cProfile
import importlib.util
import io
import pstats
import sys
import time
from pathlib import Path

from benchmarks.common import (loadavg, new_result, paired_ratio, paired_timings, parse_args, plot_dir,
                               plt, save_result, table)

NAME = "rollout"
MODULE = "benchmarks.bench_rollout"
TARGET_VS_PLAIN = 0.9  # issue 3: fst_lab rollouts >= 0.9x plain generate on the same batch
TARGET_VS_LLAMA = 1.0  # issue 9: batched fst_lab rollouts >= 1.0x llama.cpp single-stream


# ---------------------------------------------------------------------------- the three runners
def _plain_generate(policy, prompts: list[str], max_new_tokens: int, batch_size: int,
                    **extra) -> tuple[int, list[list[int]]]:
    """``model.generate`` on pre-rendered prompts (no prefix cache; under the policy's autocast, if any);
    returns (tokens generated, ids per prompt)."""
    import torch

    tok, model = policy.tokenizer, policy.model
    tok.padding_side = "left"
    n, all_ids = 0, []
    for start in range(0, len(prompts), batch_size):
        enc = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode(), policy._autocast():
            seqs = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                  top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  **extra)
        for row in seqs[:, enc["input_ids"].shape[1]:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            all_ids.append(row)
            n += len(row)
    return n, all_ids


def _fst_rollout(policy, harness, examples, task, max_new_tokens: int, batch_size: int):
    from fst_lab.rollout import rollout

    trajs = rollout(policy, harness, examples, task, temperature=0.0, max_new_tokens=max_new_tokens,
                    batch_size=batch_size)
    return sum(t.completion_tokens for t in trajs), trajs


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load_llama(threads: int):
    from llama_cpp import Llama

    from fst_lab.models import embedded_gguf

    return Llama(model_path=str(embedded_gguf()), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                 n_batch=512, seed=0, verbose=False)


def _llama_generate(llm, prompts: list[str], max_new_tokens: int) -> int:
    """One stream at a time, fresh cache each prompt (as HF: no prefix reuse across prompts)."""
    n = 0
    for p in prompts:
        llm.reset()
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        out = llm.create_completion(prompt=ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1,
                                    repeat_penalty=1.0)
        # usage excludes the EOS token; HF counts it, so add it back when the model stopped on EOS
        n += out["usage"]["completion_tokens"] + (out["choices"][0]["finish_reason"] == "stop")
    return n


@contextlib.contextmanager
def time_inside_generate(policy):
    """Patch ``policy.model.generate`` to accumulate the wall time spent inside it."""
    model = policy.model
    orig = model.generate
    box = {"seconds": 0.0, "calls": 0}

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            box["seconds"] += time.perf_counter() - t0
            box["calls"] += 1

    model.generate = timed
    try:
        yield box
    finally:
        del model.generate  # back to the class method


# ---------------------------------------------------------------------------- measurements
def throughput(policy, task, harness, examples, *, batch_sizes, max_new_tokens, reps, llm) -> list[dict]:
    prompts = [policy.chat_prompt(harness.render(ex.inputs)[0], list(harness.tools) or None) for ex in examples]
    rows = []
    for bs in batch_sizes:
        counts: dict[str, int] = {}
        check: dict[str, object] = {}

        def fst():
            counts["fst_lab"], check["fst"] = _fst_rollout(policy, harness, examples, task, max_new_tokens, bs)

        def plain():
            counts["plain"], check["plain"] = _plain_generate(policy, prompts, max_new_tokens, bs)

        fns = {"fst_lab": fst, "plain": plain}
        if llm is not None:
            def llama():
                counts["llama.cpp"] = _llama_generate(llm, prompts, max_new_tokens)
            fns["llama.cpp"] = llama
        times = paired_timings(fns, reps, warmup=1)
        identical = [[i for turn in t.turns for i in turn.completion_ids] for t in check["fst"]] == check["plain"]
        row = {"batch": bs, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "reps": reps,
               "identical_ids": identical, "loadavg": loadavg()}
        for m, ts in times.items():
            row[f"{m}_tokens"] = counts[m]
            row[f"{m}_s"] = ts
            row[f"{m}_tok_s"] = counts[m] / sorted(ts)[len(ts) // 2]
        # paired ratios of rates = inverse ratios of times of the same rep (same token counts)
        row["fst_vs_plain"] = paired_ratio(times["plain"], times["fst_lab"])
        if llm is not None:
            rate_f = [counts["fst_lab"] / t for t in times["fst_lab"]]
            rate_l = [counts["llama.cpp"] / t for t in times["llama.cpp"]]
            row["fst_vs_llama"] = paired_ratio(rate_f, rate_l)
        rows.append(row)
        print(f"  batch {bs}: " + ", ".join(f"{m} {row[f'{m}_tok_s']:.1f} tok/s" for m in times)
              + f"; fst/plain {row['fst_vs_plain']['median']:.3f}; identical ids {identical}", flush=True)
    return rows


def experiments(policy, prompts_b1: list[str], prompts_bn: list[str], *, max_new_tokens: int, reps: int) -> list[dict]:
    """Runtime knobs outside fst_lab's code, each paired against plain fp32 ``generate`` (dynamic cache):
    a static KV cache (no per-step ``torch.cat`` of the cache) and bfloat16 weights (half the bytes per
    token; this CPU has AMX-BF16). Reported, not adopted: bf16 changes the numbers the policy produces."""
    import copy

    import torch

    rows = []
    bf16 = copy.deepcopy(policy)
    bf16.model = bf16.model.to(torch.bfloat16)
    variants = {
        "static KV cache": (policy, {"cache_implementation": "static"}),
        "bfloat16 weights": (bf16, {}),
    }
    for prompts in (prompts_b1, prompts_bn):
        bs = 1 if prompts is prompts_b1 else len(prompts)
        for name, (pol, extra) in variants.items():
            ids: dict[str, list] = {}

            def base():
                ids["base"] = _plain_generate(policy, prompts, max_new_tokens, bs)

            def variant(pol=pol, extra=extra):
                ids["variant"] = _plain_generate(pol, prompts, max_new_tokens, bs, **extra)

            times = paired_timings({"fp32 dynamic cache": base, name: variant}, reps, warmup=1)
            rows.append({"variant": name, "batch": bs, "prompts": len(prompts),
                         "speedup": paired_ratio(times["fp32 dynamic cache"], times[name]),
                         "identical_ids": ids["base"][1] == ids["variant"][1],
                         "base_tok_s": ids["base"][0] / sorted(times["fp32 dynamic cache"])[reps // 2],
                         "variant_tok_s": ids["variant"][0] / sorted(times[name])[reps // 2], "loadavg": loadavg()})
            print(f"  experiment {name}, batch {bs}: speedup {rows[-1]['speedup']['median']:.2f}x, "
                  f"identical ids {rows[-1]['identical_ids']}", flush=True)
    del bf16
    return rows


def generate_share(policy, task, harness, examples, *, batch_size, max_new_tokens) -> dict:
    """Share of one rollout's wall time spent inside model.generate (the rest is fst_lab's own code)."""
    from fst_lab.rollout import rollout

    with time_inside_generate(policy) as box:
        t0 = time.perf_counter()
        trajs = rollout(policy, harness, examples, task, temperature=0.0, max_new_tokens=max_new_tokens,
                        batch_size=batch_size)
        total = time.perf_counter() - t0
    toks = sum(t.completion_tokens for t in trajs)
    return {"task": task.name, "batch": batch_size, "examples": len(examples), "turns_mean":
            sum(t.n_turns for t in trajs) / len(trajs), "tool_calls": sum(len(t.tool_calls) for t in trajs),
            "generate_calls": box["calls"], "total_s": total, "generate_s": box["seconds"],
            "outside_generate_s": total - box["seconds"], "outside_share": (total - box["seconds"]) / total,
            "tokens": toks, "tok_s": toks / total,
            "prompt_tokens": sum(t.prompt_tokens for t in trajs)}


def profile_batch1(policy, task, harness, example, *, max_new_tokens) -> dict:
    """cProfile (by function) and torch.profiler (by operator) of one batch-1 rollout."""
    from fst_lab.rollout import rollout

    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    trajs = rollout(policy, harness, [example], task, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=1)
    pr.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(pr, stream=io.StringIO())
    # cumulative time of the stages a reader cares about, found by function name
    wanted = {
        "rollout": ("rollout.py", "rollout_pairs"),
        "generate": ("utils.py", "generate"),  # transformers/generation/utils.py
        "forward": ("modeling_llama.py", "forward"),  # the outermost forward has the largest cumulative time
        "render": ("models.py", "render_chat"),
        "tokenise": ("tokenization_utils_base.py", "__call__"),
        "decode": ("tokenization_utils_base.py", "decode"),
        "advance": ("rollout.py", "_advance"),
        "score": ("rollout.py", "score_trajectory"),
    }
    cum = {}
    for label, (fname, func) in wanted.items():
        cum[label] = max((ct for (f, _line, fn), (_cc, _nc, _tt, ct, _callers) in st.stats.items()
                          if fn == func and f.endswith(fname)), default=0.0)
    stages = {
        "rollout total": cum["rollout"],
        "model.generate (transformers)": cum["generate"],
        "↳ decoder forward passes": cum["forward"],
        "↳ generation loop around them (logits processing, stopping, cache)": cum["generate"] - cum["forward"],
        "fst_lab outside generate": cum["rollout"] - cum["generate"],
        "↳ chat template rendering": cum["render"],
        "↳ tokenising prompts": cum["tokenise"],
        "↳ decoding completions": cum["decode"],
        "↳ tool parsing / execution": cum["advance"],
        "↳ scoring": cum["score"],
    }
    top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:12]
    top_rows = [{"function": f"{Path(f).name}:{line}({fn})", "tottime_s": tt, "calls": nc}
                for (f, line, fn), (_cc, nc, tt, _ct, _c) in top]
    toks = trajs[0].completion_tokens

    # operator view: where the forward passes spend CPU time
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rollout(policy, harness, [example], task, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=1)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in ops) or 1.0
    op_rows = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total_us,
                "calls": e.count} for e in ops[:12]]
    n_ops = sum(e.count for e in ops if e.key.startswith("aten::"))
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear",
                                                                 "aten::matmul", "mkldnn::_linear_pointwise"))
    n_params = sum(p.numel() for p in policy.model.parameters())
    bytes_per_param = next(policy.model.parameters()).element_size()
    return {"wall_s": wall, "tokens": toks, "cprofile_stages_s": stages, "cprofile_top": top_rows,
            "torch_ops_top": op_rows, "torch_total_self_cpu_ms": total_us / 1000, "matmul_share": matmul / total_us,
            "aten_ops_per_token": n_ops / max(1, toks), "params": n_params, "weight_bytes": n_params * bytes_per_param}


# ---------------------------------------------------------------------------- main
def run(args) -> dict:
    import torch

    from fst_lab.harness import load_named
    from fst_lab.models import load_policy, tiny_policy
    from fst_lab.tasks import get_task

    smoke = args.smoke
    res = new_result(NAME, MODULE, args.argv, smoke=smoke,
                     model="tiny-llama (random init)" if smoke else "smollm2-135m",
                     targets={"fst_vs_plain": TARGET_VS_PLAIN, "fst_batched_vs_llama_single": TARGET_VS_LLAMA})
    policy = tiny_policy(seed=0) if smoke else load_policy(dtype=args.dtype)
    policy.autocast = args.autocast
    policy.prefix_cache = args.prefix_cache
    if args.bf16_weights:  # as a precision-bf16 learner samples (backends.cpu_trainer_setup): linears stored in
        # bf16, rotary cos/sin (hence the KV cache) in bf16, under bf16 autocast
        from fst_lab.backends import rotary_in_autocast_dtype, store_frozen_linears_bf16

        policy.model.requires_grad_(False)
        res["bf16_linears"] = store_frozen_linears_bf16(policy.model)
        res["bf16_rotary"] = rotary_in_autocast_dtype(policy.model)
        policy.autocast = "bf16"
    res["dtype"] = str(next(policy.model.parameters()).dtype)
    res["autocast"], res["prefix_cache"] = policy.autocast, args.prefix_cache
    res["seed"] = 0
    math_task, hover_task = get_task("math", level=1, seed=0), get_task("hover", level=1, seed=0)
    math_h, hover_h = load_named("math"), load_named("hover")
    n_tok = args.max_new_tokens or (8 if smoke else 64)
    n_b1 = 2 if smoke else args.batch1_prompts
    reps = 1 if smoke else args.reps
    # batch 1 runs n_b1 prompts one at a time; a batch of B runs B prompts in one generate call
    batch_sizes = [1, 2] if smoke else [int(b) for b in args.batch_sizes.split(",")]
    n_b8 = max(b for b in batch_sizes if b > 1) if any(b > 1 for b in batch_sizes) else n_b1
    threads = torch.get_num_threads()
    res["settings"] = {"max_new_tokens": n_tok, "batch_sizes": batch_sizes, "prompts_batch1": n_b1,
                       "prompts_batched": n_b8, "reps": reps, "torch_threads": threads, "task": "math level 1 (val)",
                       "harness": "math (single turn, no tools)", "sampling": "greedy"}

    llm = None
    if not llama_cpp_available():
        res["llama_cpp"] = "not installed"
    elif smoke:
        res["llama_cpp"] = "skipped in smoke mode"
    else:
        t0 = time.perf_counter()
        llm = load_llama(threads)
        from importlib.metadata import version

        res["llama_cpp"] = {"version": version("llama-cpp-python"), "n_threads": threads, "load_s":
                            time.perf_counter() - t0, "weights": "embedded GGUF (Q4_1)"}
    print(f"llama.cpp: {res['llama_cpp'] if isinstance(res['llama_cpp'], str) else 'loaded'}", flush=True)

    rows = []
    exs = math_task.examples("val", max(n_b1, n_b8))
    for bs in batch_sizes:
        rows += throughput(policy, math_task, math_h, exs[:n_b1 if bs == 1 else bs], batch_sizes=[bs],
                           max_new_tokens=n_tok, reps=reps, llm=llm)
        res["throughput"] = rows
        save_result(args.out, NAME, res)

    if not args.extras:
        res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        save_result(args.out, NAME, res)
        return res
    # where a rollout's time goes: inside model.generate vs our code (single- and multi-turn)
    shares = []
    for task, h in ((math_task, math_h), (hover_task, hover_h)):
        for bs in sorted({min(batch_sizes), 8 if 8 in batch_sizes else n_b8}):
            ex = task.examples("val", bs)
            shares.append(generate_share(policy, task, h, ex, batch_size=bs, max_new_tokens=n_tok))
    res["generate_share"] = shares
    save_result(args.out, NAME, res)

    if args.experiments and not smoke:
        prompts = [policy.chat_prompt(math_h.render(ex.inputs)[0]) for ex in exs]
        res["experiments"] = experiments(policy, prompts[:2], prompts[:8], max_new_tokens=n_tok, reps=max(2, reps - 1))
        save_result(args.out, NAME, res)

    res["profile_batch1"] = profile_batch1(policy, math_task, math_h, exs[0], max_new_tokens=min(n_tok, 32))
    if llm is not None:
        res["profile_batch1"]["llama_weight_bytes"] = Path(llm.model_path).stat().st_size
    res["loadavg_end"] = loadavg()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(args.out, NAME, res)
    if not smoke:
        plot(res, plot_dir(args.out, smoke))
    return res


def plot(res: dict, out_dir: Path) -> list[Path]:
    pyplot = plt()
    rows = res.get("throughput") or []
    if not rows:
        return []
    methods = [m for m in ("fst_lab", "plain", "llama.cpp") if f"{m}_tok_s" in rows[0]]
    fig, ax = pyplot.subplots(figsize=(6, 3.6))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + i * width for j in range(len(rows))]
        ys = [r.get(f"{m}_tok_s", 0) for r in rows]
        ax.bar(xs, ys, width=width, label=m + (" (one stream at a time)" if m == "llama.cpp" else ""))
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"batch {r['batch']}" for r in rows])
    ax.set_ylabel("generated tokens / s (median)")
    ax.set_title(f"Rollout throughput, {res['model']}, {res['settings']['max_new_tokens']} new tokens, greedy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "rollout_throughput.png"
    fig.savefig(p, dpi=110)
    pyplot.close(fig)
    return [p]


def markdown(res: dict, plots_rel: str = "plots") -> str:
    """The docs/BENCHMARKS.md section for this benchmark."""
    s = res["settings"]
    out = [f"Command: `{res['command']}` — model {res['model']} ({res.get('dtype')}), {s['task']}, harness "
           f"{s['harness']}, {s['sampling']}, {s['max_new_tokens']} new tokens, {s['reps']} alternating reps per "
           f"method (median shown), torch threads {s['torch_threads']}, shared-prefix KV cache "
           f"{'on' if res.get('prefix_cache', False) else 'off'}, autocast {res.get('autocast') or 'none'}"
           f"{', linears stored in bf16' if res.get('bf16_linears') else ''}. llama.cpp: "
           + (res["llama_cpp"] if isinstance(res["llama_cpp"], str) else
              f"llama-cpp-python {res['llama_cpp']['version']}, {res['llama_cpp']['n_threads']} threads, "
              f"{res['llama_cpp']['weights']}, one stream at a time, fresh KV cache per prompt") + ".", ""]
    rows = []
    for r in res.get("throughput", []):
        row = {"batch": r["batch"], "prompts": r["prompts"], "fst_lab tok/s": r.get("fst_lab_tok_s"),
               "plain generate tok/s": r.get("plain_tok_s"), "llama.cpp tok/s": r.get("llama.cpp_tok_s"),
               "fst_lab / plain (paired median)": (r.get("fst_vs_plain") or {}).get("median"),
               "fst_lab / llama.cpp single-stream": (r.get("fst_vs_llama") or {}).get("median"),
               "same token ids": r.get("identical_ids"), "load avg": (r.get("loadavg") or [None])[0]}
        rows.append(row)
    out.append(table(rows))
    out.append("")
    tp = res.get("throughput", [])
    if tp:
        b1 = tp[0]
        lines = [f"- Issue 3 target (fst_lab ≥ {TARGET_VS_PLAIN}× plain `generate`, same batch): "
                 + ", ".join(f"batch {r['batch']}: {r['fst_vs_plain']['median']:.3f}× "
                             f"(range {r['fst_vs_plain']['min']:.3f}–{r['fst_vs_plain']['max']:.3f}) "
                             f"{'✅' if r['fst_vs_plain']['median'] >= TARGET_VS_PLAIN else '❌'}" for r in tp)]
        if "llama.cpp_tok_s" in b1:
            parts = [f"batch {r['batch']}: {r['fst_vs_llama']['median']:.2f}× "
                     f"{'✅' if r['fst_vs_llama']['median'] >= TARGET_VS_LLAMA else '❌'}"
                     for r in tp if r["batch"] > 1]
            lines.append(f"- Issue 9 target (batched fst_lab ≥ {TARGET_VS_LLAMA}× llama.cpp single-stream on the "
                         f"same prompts, paired median): " + ", ".join(parts) + f"; at batch 1 fst_lab is "
                         f"{b1['fst_vs_llama']['median']:.2f}× llama.cpp.")
        else:
            lines.append(f"- Issue 9 target: llama.cpp {res['llama_cpp']} — not measured.")
        out += lines + [""]
    sh = res.get("generate_share")
    if sh:
        out += ["Where a rollout's wall time goes (inside `model.generate` vs fst_lab's own code: rendering, "
                "tokenising, decoding, tool calls, scoring):", ""]
        out.append(table([{"task": r["task"], "batch": r["batch"], "examples": r["examples"],
                           "turns (mean)": r["turns_mean"], "tool calls": r["tool_calls"],
                           "generate calls": r["generate_calls"], "total s": r["total_s"],
                           "outside generate s": r["outside_generate_s"], "outside share": r["outside_share"],
                           "tok/s": r["tok_s"]} for r in sh]))
        out.append("")
    pf = res.get("profile_batch1")
    if pf:
        out += [f"Profile of one batch-1 rollout ({pf['tokens']} tokens, {pf['wall_s']:.2f} s under cProfile), "
                "cumulative seconds by stage:", ""]
        out.append(table([{"stage": k, "seconds": v} for k, v in pf["cprofile_stages_s"].items()]))
        out += ["", f"torch.profiler, same rollout: {pf['aten_ops_per_token']:.0f} aten ops per generated token; "
                f"matrix multiplies take {pf['matmul_share']:.0%} of operator self-time. Top operators:", ""]
        out.append(table(pf["torch_ops_top"][:8], ["op", "self_cpu_ms", "share", "calls"]))
        out.append("")
        b1 = (res.get("throughput") or [{}])[0]
        if b1.get("batch") == 1:
            wb = pf["weight_bytes"]
            line = (f"Bytes per generated token at batch 1 (each decode step reads every weight once): transformers "
                    f"reads {wb / 1e6:.0f} MB of {res.get('dtype', 'float32').replace('torch.', '')} weights "
                    f"({pf['params'] / 1e6:.0f} M parameters) → at {b1['plain_tok_s']:.1f} tok/s that is "
                    f"{wb * b1['plain_tok_s'] / 1e9:.1f} GB/s")
            if pf.get("llama_weight_bytes") and b1.get("llama.cpp_tok_s"):
                lb = pf["llama_weight_bytes"]
                line += (f"; llama.cpp reads the {lb / 1e6:.0f} MB Q4_1 GGUF → at {b1['llama.cpp_tok_s']:.1f} tok/s "
                         f"that is {lb * b1['llama.cpp_tok_s'] / 1e9:.1f} GB/s")
            out += [line + ".", ""]
    ex = res.get("experiments")
    if ex:
        out += ["Runtime knobs outside fst_lab's code, each against plain float32 `generate` with the default "
                "dynamic cache (paired, alternating; speedup > 1 is faster):", ""]
        out.append(table([{"variant": r["variant"], "batch": r["batch"], "prompts": r["prompts"],
                           "speedup (median)": r["speedup"]["median"],
                           "range": f"{r['speedup']['min']:.2f}–{r['speedup']['max']:.2f}",
                           "baseline tok/s": r["base_tok_s"], "variant tok/s": r["variant_tok_s"],
                           "same token ids": r["identical_ids"]} for r in ex]))
        out.append("")
    if not res.get("smoke"):
        out.append(f"![rollout throughput]({plots_rel}/rollout_throughput.png)")
    return "\n".join(out)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--reps", type=int, default=3, help="measured reps per method (alternating)")
        p.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (smoke: 8)")
        p.add_argument("--batch1-prompts", type=int, default=4, help="prompts run one at a time at batch 1")
        p.add_argument("--batch-sizes", default="1,8,16", help="comma-separated; B > 1 runs B prompts in one batch")
        p.add_argument("--dtype", default="float32", help="policy dtype (float32 = what fst_lab uses)")
        p.add_argument("--autocast", default=None, choices=[None, "fp32", "bf16"],
                       help="run generation under this autocast (bf16 = SlowConfig.precision bf16's rollouts)")
        p.add_argument("--bf16-weights", action="store_true",
                       help="store the linears in bf16 and generate under bf16 autocast (precision bf16's sampler)")
        p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                       help="fst_lab rollouts without the shared-prefix KV cache (as before issue 19)")
        p.add_argument("--no-extras", dest="extras", action="store_false",
                       help="throughput only: skip the generate-share and profile sections")
        p.add_argument("--no-experiments", dest="experiments", action="store_false",
                       help="skip the static-cache / bfloat16 comparisons")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    args.argv = argv
    res = run(args)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
