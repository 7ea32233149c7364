"""Peak memory of one RL micro-batch: what `slow.micro_batch_size` buys.

    python -m benchmarks.bench_memory --threads 1          # SmolLM2-135M at the HoVer grid's shape (~6 min idle)
    python -m benchmarks.bench_memory --smoke              # tiny random model (pipeline check)

One training forward + backward as the slow loop runs it per micro-batch: the embedded policy with LoRA
r = 16 on q/k/v/o, left-padded sequences, log-probs of the completion positions only, under float32 and
under bf16 autocast (the slow loop's `precision: auto` on a CPU with bf16 instructions), for micro-batches of
2, 4 and 8 completions. The shape is the powered grid's HoVer step (~470 tokens a sequence, padded to the
micro-batch's longest: 550, of which 150 are the completion and 50 left padding). Each configuration runs in
a fresh process, so its peak resident memory (`ru_maxrss`) is its own; `peak - loaded` is what the step
added to the loaded model. With gradient accumulation over the generation batch, TRL's CISPO / DAPO losses
divide by the generation batch's token count, so every micro-batch size gives the same update: the choice is
memory against per-call overhead.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from benchmarks.common import REPO, new_result, parse_args, save_result, table

NAME = "memory"
MODULE = "benchmarks.bench_memory"
MICRO = (2, 4, 8)
PRECISIONS = ("fp32", "bf16")
SHAPE = {"seq": 550, "completion": 150, "pad": 50}
SMOKE_SHAPE = {"seq": 24, "completion": 8, "pad": 4}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def one(micro: int, precision: str, shape: dict, smoke: bool, reps: int = 1) -> dict:
    """The measurement, in this process: load, then ``reps`` forward+backward passes of one micro-batch."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model

    from fst_lab.models import load_policy, tiny_policy

    torch.manual_seed(0)
    policy = tiny_policy(seed=0) if smoke else load_policy()
    model = get_peft_model(policy.model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (micro, shape["seq"]))
    mask = torch.ones_like(ids)
    mask[:, :shape["pad"]] = 0
    loaded = _rss_mb()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    seconds = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with ctx:
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=shape["completion"])
        logps = torch.log_softmax(out.logits.float(), -1).gather(-1, ids[:, -shape["completion"]:, None])
        (-logps.mean()).backward()
        seconds.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    tokens = micro * (shape["seq"] - shape["pad"])
    return {"micro": micro, "precision": precision, "loaded_mb": round(loaded), "peak_mb": round(_rss_mb()),
            "added_mb": round(_rss_mb() - loaded), "seconds": round(min(seconds), 2),
            "tokens_per_s": round(tokens / min(seconds), 1), "threads": torch.get_num_threads()}


def measure(micro: int, precision: str, *, smoke: bool, threads: int | None) -> dict:
    """:func:`one` in a fresh interpreter (a process's peak RSS never goes down)."""
    cmd = [sys.executable, "-m", MODULE, "--child", json.dumps({"micro": micro, "precision": precision,
                                                                "smoke": smoke, "threads": threads})]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(res: dict, plots_rel: str = "plots") -> str:
    shape = res["shape"]
    rows = [{"precision": r["precision"], "micro-batch": r["micro"], "peak RSS MB": r["peak_mb"],
             "added by the step MB": r["added_mb"], "added per completion MB": round(r["added_mb"] / r["micro"]),
             "seconds": r["seconds"], "tokens/s": r["tokens_per_s"]} for r in res["rows"]]
    return "\n".join([f"Command: `{res['command']}`; {res['rows'][0]['threads'] if res['rows'] else '?'} thread(s); "
                      f"sequences of {shape['seq']} tokens ({shape['completion']} completion, {shape['pad']} left "
                      f"padding).", "", table(rows)])


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--child", default=None, help="internal: one measurement, printed as JSON")

    args = parse_args(__doc__.splitlines()[0], argv, extra)
    if args.child:
        spec = json.loads(args.child)
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        print(json.dumps(one(spec["micro"], spec["precision"], SMOKE_SHAPE if spec["smoke"] else SHAPE, spec["smoke"])))
        return {}
    res = new_result(NAME, MODULE, argv, smoke=args.smoke, shape=SMOKE_SHAPE if args.smoke else SHAPE, rows=[])
    for precision in PRECISIONS:
        for micro in (MICRO[:2] if args.smoke else MICRO):
            row = measure(micro, precision, smoke=args.smoke, threads=args.threads)
            res["rows"].append(row)
            print(f"{precision} micro-batch {micro}: peak {row['peak_mb']} MB (+{row['added_mb']} MB), "
                  f"{row['seconds']} s", flush=True)
    save_result(args.out, NAME, res)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
