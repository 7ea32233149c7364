"""The one-call GPU check: does fst_lab's GPU path work on this machine? Prints one JSON report.

On a CUDA machine (run through ``gpu/check.sh``, which installs the carried wheels first)::

    bash gpu/check.sh                         # or: python gpu/check.py --model gpu/bundle/model

On a CPU (the branch CI runs, ``tests/test_gpu_check.py``; transformers backend, tiny model)::

    python gpu/check.py --cpu --no-pytest

Checks, in order (each one is timed; a failure is recorded and the next check still runs):

- ``env``: versions of the libraries that matter, the GPU's name and memory.
- ``backend``: the backend fst_lab selects (``unsloth`` on CUDA with Unsloth installed, else
  ``transformers``), and the policy loaded through it (Unsloth's ``FastLanguageModel`` on CUDA).
- ``cispo``: three CISPO steps (tau = 4, beta = 0.001) change the LoRA weights; reward, loss and KL finite.
- ``resume``: save -> a fresh learner -> load -> one more step: ``global_step`` and ``samples_seen``
  continue from the saved values.
- ``fast``: one fast step (GEPA round) with a replayed reflection answer (no network): it runs,
  records the reflective proposal, returns a population.
- ``vllm``: TRL's colocated vLLM engine for rollouts, only when vLLM is importable (it is too big to
  carry to the device machine, so there it is reported ``not checked``).
- ``pytest``: ``pytest --gpu -m gpu`` (the suite's CUDA-only tests).

Exit status: 0 when every check passed or was not applicable (``"ok": null`` with the reason), 1 when
any check failed. The report is also written to ``--out``.

Importing this module does nothing heavy (no torch import); ``tests/test_gpu_check.py`` imports it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "gpu" / "bundle"
MODEL_SEED = 0
# The tiny model: small, but with Unsloth-friendly shapes (head_dim 64, hidden a multiple of 128).
TINY_MODEL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=True)
VERSIONS = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo", "vllm",
            "triton", "litellm", "gepa", "jsonschema", "bitsandbytes", "xformers")
# A reflection answer written the way frontier models answer GEPA's prompt: prose, then a fenced block.
REPLAYED_REFLECTION = ("The assistant often writes long reasoning and forgets the final line.\n\n"
                       "```\nYou are a careful solver. Think briefly, then end with a line 'Answer: <value>'.\n```")


# ---------------------------------------------------------------------------- the tiny model
def materialize_model(directory: str | os.PathLike, *, tokenizer_from: str | None = None, dtype: str = "bfloat16",
                      seed: int = MODEL_SEED) -> Path:
    """A tiny random-init Llama saved as a plain HF folder (config + safetensors + tokenizer + chat template).

    ``directory`` may already hold the tokenizer files (the carried bundle does: ``make gpu-bundle``
    copies the embedded SmolLM2 tokenizer and chat template there); the weights are generated here,
    seeded, so they need not be carried. Without tokenizer files, ``tokenizer_from`` (default: the
    embedded model's converted folder) supplies them. Returns the folder.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "model.safetensors").exists() and (d / "config.json").exists():
        return d
    if not (d / "tokenizer_config.json").exists():
        if tokenizer_from is None:
            from fst_lab.models import ensure_converted

            tokenizer_from = str(ensure_converted())
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{d}: the tokenizer has no chat template")
    torch.manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=pad, **TINY_MODEL)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.generation_config.pad_token_id = pad
    model.save_pretrained(d)
    return d


# ---------------------------------------------------------------------------- harnesses for the toy task
def _population(k: int):
    from fst_lab.harness import Harness

    seed = Harness.load(REPO / "harnesses" / "math.yaml")
    return [seed.with_components({"system_prompt": f"You are solver {chr(65 + i)}.\n", "few_shot": "[]"},
                                 origin="manual") for i in range(k)]


# ---------------------------------------------------------------------------- the checks
class Check:
    """Runs the checks in order and collects the report."""

    def __init__(self, *, cpu: bool, model_dir: Path, work: Path, deadline: float):
        self.cpu, self.model_dir, self.work, self.deadline = cpu, model_dir, work, deadline
        self.results: list[dict] = []
        self.state: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> dict:
        t0 = time.time()
        rec: dict[str, Any] = {"name": name}
        if time.time() > self.deadline:
            rec.update(ok=False, detail="not started: the time budget was used up")
        else:
            try:
                out = fn()
                if isinstance(out, tuple) and out and out[0] is None:  # (None, reason): not applicable here
                    rec.update(ok=None, detail=out[1])
                else:
                    rec.update(ok=True, **(out or {}))
            except Exception as e:
                rec.update(ok=False, detail=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc(limit=8)[-3000:])
        rec["seconds"] = round(time.time() - t0, 2)
        self.results.append(rec)
        status = {True: "ok", False: "FAIL", None: "not checked"}[rec["ok"]]
        print(f"[gpu-check] {name}: {status} ({rec['seconds']}s) {rec.get('detail', '')}", file=sys.stderr, flush=True)
        return rec

    # -- env
    def env(self) -> dict:
        import torch

        versions = {}
        for name in VERSIONS:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None
        out = {"python": sys.version.split()[0], "versions": versions, "cuda": torch.cuda.is_available()}
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), torch_cuda=torch.version.cuda)
        elif not self.cpu:
            raise RuntimeError("no CUDA device visible (torch.cuda.is_available() is False); use --cpu on a CPU")
        return out

    # -- backend
    def backend(self) -> dict:
        from fst_lab.models import load_policy, select_backend

        expected = "transformers" if self.cpu else "unsloth"
        selected = select_backend("transformers" if self.cpu else None)
        if selected != expected:
            why = "" if self.cpu else (" (unsloth importable: "
                                       f"{importlib.util.find_spec('unsloth') is not None})")
            raise RuntimeError(f"selected backend {selected!r}, expected {expected!r}{why}")
        t0 = time.time()
        materialize_model(self.model_dir)
        policy = load_policy(str(self.model_dir), backend=selected, dtype="float32" if self.cpu else "bfloat16")
        if policy.backend != expected:
            raise RuntimeError(f"policy loaded with backend {policy.backend!r}, expected {expected!r}")
        self.state["policy"] = policy
        out = {"backend": selected, "model_class": type(policy.model).__name__,
               "load_seconds": round(time.time() - t0, 2), "model_dir": str(self.model_dir)}
        out.update(self._embedded_stand_in())
        return out

    def _embedded_stand_in(self) -> dict:
        """The embedded model's 94 MiB GGUF can't be carried; tests that ask for it (``tiny_policy``
        takes its tokenizer from there) get the tiny model's folder in a private cache instead."""
        import shutil

        from fst_lab.models import converted_dir

        if self.cpu or (converted_dir() / "model.safetensors").exists():
            return {}
        os.environ["FST_LAB_CACHE"] = str(self.work / "fst-cache")
        shutil.copytree(self.model_dir, converted_dir())
        return {"embedded_stand_in": f"{converted_dir()} (tiny model: the embedded GGUF is not carried)"}

    def _config(self, **kw):
        from fst_lab.config import SlowConfig

        base = dict(loss_type="cispo", epsilon_high=4.0, beta=0.001, num_generations=4, population_size=2,
                    prompts_per_step=2, max_completion_length=16, warmup_steps=0, learning_rate=1e-2,
                    kl_probe_size=1, seed=0, lora_r=8, lora_alpha=16, max_grad_norm=0.0,
                    backend="transformers" if self.cpu else "auto")
        base.update(kw)
        return SlowConfig(**base)

    # -- three CISPO steps
    def cispo(self) -> dict:
        from fst_lab.slow import SlowLearner
        from fst_lab.tasks.toy import ParityTask

        policy = self.state.get("policy")
        if policy is None:
            raise RuntimeError("no policy (the backend check failed)")
        learner = SlowLearner(policy, ParityTask(), _population(2), self._config(), output_dir=self.work / "cispo")
        self.state["learner"] = learner
        before = {k: v.detach().float().cpu().clone() for k, v in learner.trainer.model.named_parameters()
                  if "lora" in k}
        if not before:
            raise RuntimeError("the trained model has no LoRA parameters")
        t0 = time.time()
        recs = learner.step(3)
        step_s = (time.time() - t0) / 3
        after = {k: v.detach().float().cpu() for k, v in learner.trainer.model.named_parameters() if "lora" in k}
        changed = sum(not bool((after[k] == before[k]).all()) for k in before)
        if changed == 0:
            raise RuntimeError("no LoRA tensor changed in 3 steps")
        last = recs[-1]
        figures = {k: last.get(k) for k in ("reward", "loss", "kl", "kl_train", "kl_probe", "global_step",
                                              "samples", "rollouts") if k in last}
        kl = last.get("kl", last.get("kl_probe"))
        for key, val in (("reward", last.get("reward")), ("kl", kl)):
            if val is None or not math.isfinite(float(val)):
                raise RuntimeError(f"{key} is {val!r} (expected a finite number); record: {_short(last)}")
        if int(last.get("global_step", 0)) != 3:
            raise RuntimeError(f"global_step {last.get('global_step')} after 3 steps")
        self.state["samples_after_3"] = learner.samples_seen
        return {"lora_tensors_changed": f"{changed}/{len(before)}", "seconds_per_step": round(step_s, 2),
                "backend": learner.backend, **figures}

    # -- save -> resume
    def resume(self) -> dict:
        from fst_lab.models import load_policy
        from fst_lab.slow import SlowLearner
        from fst_lab.tasks.toy import ParityTask

        learner = self.state.get("learner")
        if learner is None:
            raise RuntimeError("no learner (the CISPO check failed)")
        ckpt = learner.save_state(self.work / "ckpt")
        saved_step, saved_samples = learner.global_step, learner.samples_seen
        learner.close()
        self.state.pop("learner", None)
        fresh = load_policy(str(self.model_dir), backend="transformers" if self.cpu else None,
                            dtype="float32" if self.cpu else "bfloat16")
        with SlowLearner(fresh, ParityTask(), _population(2), self._config(), output_dir=self.work / "resumed") as lr2:
            lr2.load_state(ckpt)
            rec = lr2.step(1)[-1]
            step, samples = lr2.global_step, lr2.samples_seen
        if step != saved_step + 1:
            raise RuntimeError(f"global_step {step} after resume + 1 step, expected {saved_step + 1}")
        if samples <= saved_samples:
            raise RuntimeError(f"samples_seen {samples} after resume + 1 step did not continue from {saved_samples}")
        return {"saved_step": saved_step, "resumed_step": step, "saved_samples": saved_samples,
                "resumed_samples": samples, "reward": rec.get("reward")}

    # -- a fast step
    def fast(self) -> dict:
        from fst_lab.config import FastConfig
        from fst_lab.fast import fast_step
        from fst_lab.tasks.toy import ParityTask
        from fst_lab.lm import ReflectionLM
        from fst_lab.models import load_policy

        policy = load_policy(str(self.model_dir), backend="transformers" if self.cpu else None,
                             dtype="float32" if self.cpu else "bfloat16")
        task = ParityTask()
        rlm = ReflectionLM("openai/gpt-4.1-mini", mock_response=REPLAYED_REFLECTION, num_retries=0)
        cfg = FastConfig(population_size=2, max_metric_calls=12, reflection_minibatch_size=2, bootstrap=False,
                         max_new_tokens=8, temperature=1.0, seed=0)
        res = fast_step(policy, task, _population(1), task.examples("train", 4), task.examples("val", 4),
                        config=cfg, round=1, reflection_lm=rlm, run_dir=self.work / "fast", progress=False)
        reflect = [p for p in res.proposal_log if p["operator"] == "reflect"]
        if not reflect:
            raise RuntimeError(f"no reflective proposal was made; proposal log: {res.proposal_log}")
        if not res.population:
            raise RuntimeError("the fast step returned an empty population")
        return {"metric_calls": res.metric_calls, "proposals": res.proposals, "accepted": res.accepted,
                "reflection_calls": res.reflection_calls, "population": len(res.population),
                "statuses": [p["status"] for p in res.proposal_log]}

    # -- vLLM colocate
    def vllm(self):
        if self.cpu:
            return None, "CPU branch: vLLM needs CUDA"
        if importlib.util.find_spec("vllm") is None:
            return None, "vLLM is not installed here (too large to carry in one device call)"
        from fst_lab.models import load_policy
        from fst_lab.slow import SlowLearner
        from fst_lab.tasks.toy import ParityTask

        policy = load_policy(str(self.model_dir), dtype="bfloat16")
        cfg = self._config(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2)
        with SlowLearner(policy, ParityTask(), _population(2), cfg, output_dir=self.work / "vllm") as lr:
            rec = lr.step(1)[-1]
        return {"global_step": rec.get("global_step"), "reward": rec.get("reward")}

    # -- the suite's GPU tests
    def pytest(self, timeout: float):
        if self.cpu:
            return None, "CPU branch: pytest --gpu -m gpu needs CUDA (skipped)"
        # Only the files that hold GPU tests: collecting the others would import the app's and notebooks'
        # libraries (gradio, jupyter), which the device machine does not have.
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "mark.gpu" in p.read_text(encoding="utf-8"))
        if not files:
            return None, "no test is marked gpu"
        cmd = [sys.executable, "-m", "pytest", "--gpu", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               "--timeout", str(int(max(20, timeout - 10))), *files]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        tail = (proc.stdout + proc.stderr)[-2500:]
        if proc.returncode not in (0, 5):
            raise RuntimeError(f"pytest exited {proc.returncode}: {tail}")
        return {"returncode": proc.returncode, "summary": tail.strip().splitlines()[-1] if tail.strip() else ""}


def _short(d: Any, n: int = 400) -> str:
    s = json.dumps(d, default=str)
    return s if len(s) <= n else s[:n] + "..."


def imported_distributions() -> dict[str, list[str]]:
    """Distribution -> top-level modules, for every module imported so far (what the check needed)."""
    dists = importlib.metadata.packages_distributions()
    out: dict[str, set[str]] = {}
    for mod in list(sys.modules):
        top = mod.split(".")[0]
        if not top or top.startswith("_") and top not in dists:
            continue
        for d in dists.get(top, []):
            out.setdefault(d, set()).add(top)
    return {k: sorted(v) for k, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU branch (transformers backend), as CI runs it")
    ap.add_argument("--model", default=None, help="tiny model folder (default: gpu/bundle/model, or a temp dir)")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    ap.add_argument("--imports-out", default=None, help="write the distributions the check imported here (JSON)")
    ap.add_argument("--no-pytest", action="store_true", help="skip `pytest --gpu -m gpu`")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all checks, pytest included "
                    "(default 420); a check not started by then fails as 'not started'")
    ap.add_argument("--only", default=None, help="comma-separated subset of checks (debugging)")
    args = ap.parse_args(argv)

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # its usage ping downloads from the hub (offline here)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="fst-gpu-check-"))
    os.chdir(work)  # unsloth writes unsloth_compiled_cache/ into the working directory
    if args.model:
        model_dir = Path(args.model)
    elif (BUNDLE / "model" / "tokenizer_config.json").exists():
        model_dir = work / "model"  # copy: the carried folder may be read-only, and the weights are written here
        import shutil

        shutil.copytree(BUNDLE / "model", model_dir)
    else:
        model_dir = work / "model"
    chk = Check(cpu=args.cpu, model_dir=model_dir, work=work, deadline=t0 + args.budget)
    plan: list[tuple[str, Callable]] = [("env", chk.env), ("backend", chk.backend), ("cispo", chk.cispo),
                                        ("resume", chk.resume), ("fast", chk.fast), ("vllm", chk.vllm)]
    if not args.no_pytest:
        plan.append(("pytest", lambda: chk.pytest(max(30.0, t0 + args.budget - 10 - time.time()))))
    only = set(args.only.split(",")) if args.only else None

    def report(final: bool) -> dict:
        failed = [r["name"] for r in chk.results if r["ok"] is False]
        rep = {"check": "fst_lab gpu/check.py", "branch": "cpu" if args.cpu else "gpu",
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "complete": final, "ok": final and not failed,
               "failed": failed, "not_checked": [r["name"] for r in chk.results if r["ok"] is None],
               "seconds": round(time.time() - t0, 1), "checks": chk.results}
        if args.out:  # after every check: a run killed at its time limit still leaves what it found
            tmp = Path(args.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(rep, indent=1, default=str) + "\n")
            tmp.replace(args.out)
        return rep

    for name, fn in plan:
        if only is None or name in only:
            chk.run(name, fn)
            report(final=False)
    learner = chk.state.pop("learner", None)
    if learner is not None:
        learner.close()
    final = report(final=True)
    failed = final["failed"]
    print(json.dumps(final, indent=1, default=str), flush=True)
    if args.imports_out:
        Path(args.imports_out).write_text(json.dumps(imported_distributions(), indent=1) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
