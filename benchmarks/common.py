"""Shared plumbing for the benchmarks: CLI flags, machine info, JSON results, paired timing, plots.

Every benchmark is one module with ``main(argv)`` and the same flags::

    python -m benchmarks.bench_rollout            # full run -> benchmarks/results/rollout.json
    python -m benchmarks.bench_rollout --smoke    # pipeline check (tiny model) -> test-artifacts/bench-smoke/

Smoke results never overwrite the committed full results: they go to ``test-artifacts/bench-smoke``
(git-ignored). ``benchmarks.run_all`` renders docs/BENCHMARKS.md from whatever JSON is in the results
directory, so a long benchmark can run in the background and the doc be regenerated when it lands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

# Offline by construction: no hub lookups, no LiteLLM cost-map fetch.
for _k, _v in (("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
               ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SMOKE_RESULTS = REPO / "test-artifacts" / "bench-smoke"
DOCS = REPO / "docs"
PLOTS = DOCS / "plots"
VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "gepa", "litellm", "llama-cpp-python", "numpy",
             "scipy")


# ---------------------------------------------------------------------------- CLI
def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--smoke`` (tiny model, tiny counts) and ``--out DIR``, plus whatever ``extra`` adds."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="pipeline check: tiny model and counts (CI)")
    p.add_argument("--out", default=None, help="results directory (default: benchmarks/results, "
                                               "or test-artifacts/bench-smoke with --smoke)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's). On an oversubscribed machine 1 thread per "
                        "process avoids OpenMP stalls that make 2-thread runs several times slower")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out = Path(args.out) if args.out else (SMOKE_RESULTS if args.smoke else RESULTS)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args]).strip()


# ---------------------------------------------------------------------------- machine
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD features that decide CPU inference speed (AVX2 / AVX-512 / AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU, cores, load (other jobs share this machine: numbers are noisy when load > cores), versions."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {d: _version(d) for d in VERSIONED},
    }
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fst_lab", "benchmarks"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------- results
def save_result(out_dir: Path, name: str, data: dict) -> Path:
    """Atomically write ``<out_dir>/<name>.json`` (written again after every finished unit of work)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_result(out_dir: Path, name: str) -> dict | None:
    """A results file, its run records in today's schema (:func:`run_records`)."""
    path = Path(out_dir) / f"{name}.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text(encoding="utf-8"))
    for run in res.get("runs", []) if isinstance(res, dict) else []:
        for key in ("records", "slow"):
            if isinstance(run.get(key), list):
                run[key] = run_records(run[key])
    return res


def run_records(recs: Sequence[dict]) -> list[dict]:
    """Metrics records as :mod:`fst_lab.records` defines them (results written before it used
    ``kl_probe`` for the probe KL and a slow record's ``samples`` for its per-step rollouts)."""
    from fst_lab.records import normalize_all

    return normalize_all(recs)


def _json_default(o):
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    return str(o)


def new_result(name: str, module: str, argv, *, smoke: bool, **extra) -> dict:
    return {"benchmark": name, "smoke": smoke, "command": command_line(module, argv), "machine": machine_info(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


# ---------------------------------------------------------------------------- timing
def paired_timings(fns: dict[str, Callable[[], Any]], reps: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Wall time of each function, alternating A B C / C B A ... so background load hits them alike.

    Other jobs share these cores, so single timings are noisy; compare medians of paired runs and the
    median of per-rep ratios rather than one-off numbers.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> dict:
    """Median and range of per-rep ratios num[i]/den[i] (e.g. time_a / time_b of the same rep)."""
    rs = [a / b for a, b in zip(num, den) if b > 0]
    if not rs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs), "n": len(rs)}


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def mean_ci(xs: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean with a bootstrap 95% interval (few seeds: read it as a rough range, not a test)."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    if len(xs) == 1:
        return {"mean": xs[0], "lo": xs[0], "hi": xs[0], "n": 1}
    rng = random.Random(seed)
    boots = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(n_boot))
    return {"mean": statistics.fmean(xs), "lo": boots[int(0.025 * n_boot)], "hi": boots[int(0.975 * n_boot) - 1],
            "n": len(xs)}


# ---------------------------------------------------------------------------- policies
def bench_policy(smoke: bool):
    """The embedded SmolLM2-135M for real runs; a tiny random Llama (same tokenizer) for smoke runs."""
    from fst_lab.models import load_policy, tiny_policy

    return tiny_policy(seed=0) if smoke else load_policy()


# ---------------------------------------------------------------------------- plots
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_dir(out_dir: Path, smoke: bool) -> Path:
    """PNGs go next to the doc for full runs, next to the smoke results otherwise."""
    d = (Path(out_dir) / "plots") if smoke else PLOTS
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------- markdown
def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(rows: list[dict], cols: Sequence[str] | None = None, headers: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no data)"
    cols = list(cols or rows[0])
    headers = list(headers or cols)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out)
