"""The one-call GPU check (gpu/check.sh + gpu/check.py) and what it carries (gpu/bundle.py, gpu/manifest.json).

No GPU here: the check's CPU branch (transformers backend, tiny model) runs end to end so it cannot rot.
The carried payload is checked against the device call's limit and the device image's package list:
from the real bundle where ``make gpu-bundle`` has built it, else from the sizes and requirements
recorded in ``gpu/manifest.json`` (``python gpu/bundle.py --record``), so CI checks it without
downloading ~45 MiB of wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bundle = _load("fst_gpu_bundle", REPO / "gpu" / "bundle.py")

MANIFEST = json.loads((REPO / "gpu" / "manifest.json").read_text())
BUNDLE_JSON = REPO / "gpu" / "bundle" / "BUNDLE.json"
MIB = 2**20
# The device machine: CPython 3.12 on Linux x86_64 (requirement markers are evaluated for it).
DEVICE_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "extra": ""}


def _names(items) -> set[str]:
    return {canonicalize_name(n) for n in items}


CARRIED = _names(w["name"] for w in MANIFEST["wheels"])
IMAGE = _names(MANIFEST["image"])
OPTIONAL = _names(MANIFEST["optional"])
NOT_CARRIED = _names(MANIFEST["not_carried"])


# ---------------------------------------------------------------------------- the check itself
def test_check_module_imports_nothing_heavy():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('c', 'gpu/check.py'); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(sorted(x for x in ('torch', 'transformers', 'trl', 'unsloth', 'litellm') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_check_sh_without_bundle_says_what_to_do(tmp_path):
    """On the device machine without the carried wheels: one JSON line naming the fix, exit 1."""
    if (REPO / "gpu" / "bundle" / "wheels").exists():
        pytest.skip("gpu/bundle/wheels exists here; the missing-bundle message can't be shown")
    out = subprocess.run(["bash", "gpu/check.sh"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert json.loads(out.stdout)["failed"] == ["install"] and "make gpu-bundle" in out.stdout


@pytest.mark.slow
def test_cpu_branch_passes_and_imports_only_what_the_device_has(tmp_path):
    report_path, imports_path = tmp_path / "report.json", tmp_path / "imports.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FST_GPU_CHECK_LIMIT": "540", "PYTHON": sys.executable}
    out = subprocess.run(["bash", "gpu/check.sh", "--cpu", "--no-pytest", "--out", str(report_path),
                          "--imports-out", str(imports_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env)
    assert report_path.exists(), out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert out.returncode == 0 and report["ok"], json.dumps(report, indent=1)[-4000:]
    assert report["branch"] == "cpu" and list(checks) == ["env", "backend", "cispo", "resume", "fast", "vllm"]
    assert checks["backend"]["backend"] == "transformers"
    changed, total = map(int, checks["cispo"]["lora_tensors_changed"].split("/"))
    assert changed > 0 and total > 0 and checks["cispo"]["global_step"] == 3
    assert checks["resume"]["resumed_step"] == checks["resume"]["saved_step"] + 1
    assert checks["resume"]["resumed_samples"] > checks["resume"]["saved_samples"]
    assert any(s in ("accepted", "rejected") for s in checks["fast"]["statuses"])
    assert checks["vllm"]["ok"] is None and report["not_checked"] == ["vllm"]

    # Every distribution the check imported is carried, preinstalled on the device, or optional there.
    imported = _names(json.loads(imports_path.read_text()))
    uncovered = sorted(imported - CARRIED - IMAGE - OPTIONAL)
    assert not uncovered, (f"gpu/check.py imported {uncovered}, which are neither carried (gpu/manifest.json "
                           "'wheels'), nor in the device image, nor listed as optional: add them to the manifest")


# ---------------------------------------------------------------------------- the carried payload
def _recorded() -> dict:
    rec = MANIFEST.get("measured")
    assert rec, "gpu/manifest.json has no 'measured' record: run `python gpu/bundle.py --record`"
    return rec


def test_manifest_is_consistent():
    names = [canonicalize_name(w["name"]) for w in MANIFEST["wheels"]]
    assert len(names) == len(set(names)), "a package is listed twice (two versions stop the whole install)"
    assert not (CARRIED & IMAGE), f"carried and preinstalled: {sorted(CARRIED & IMAGE)} (carry one only to change it)"
    assert "litellm" in CARRIED and next(w for w in MANIFEST["wheels"] if w["name"] == "litellm")["version"] != "1.107.0"
    # the recorded measurement is of exactly these wheels (re-record after changing the list)
    assert _names(_recorded()["wheels"]) == CARRIED
    gpu_pins = {canonicalize_name(r.name): str(r.specifier) for r in
                (Requirement(line.split("#")[0]) for line in (REPO / "requirements-gpu.txt").read_text().splitlines()
                 if "==" in line.split("#")[0])}
    for w in MANIFEST["wheels"]:  # the bundle carries requirements-gpu.txt's versions where it pins one
        pin = gpu_pins.get(canonicalize_name(w["name"]))
        assert pin in (None, f"=={w['version']}"), f"{w['name']}: bundle {w['version']} vs requirements-gpu.txt {pin}"


def test_payload_fits_one_device_call():
    limit = MANIFEST["limit_mib"] * MIB
    tree = bundle.worktree_bytes()
    if BUNDLE_JSON.exists():  # the real bundle: measure the files themselves
        files = [p for p in (REPO / "gpu" / "bundle").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        wheels = {bundle.wheel_name(p) for p in (REPO / "gpu" / "bundle" / "wheels").glob("*.whl")}
        assert wheels == CARRIED, f"bundle wheels differ from the manifest: {sorted(wheels ^ CARRIED)}"
    else:
        rec = _recorded()
        size = sum(w["bytes"] for w in rec["wheels"].values()) + rec["model_bytes"]
    assert size + tree <= limit, (f"carried {(size + tree) / MIB:.1f} MiB (bundle {size / MIB:.1f} + working tree "
                                  f"{tree / MIB:.1f}) > {MANIFEST['limit_mib']} MiB")


def _wheel_requirements() -> dict[str, list[str]]:
    """Each carried wheel's declared requirements: from the real wheels if built, else as recorded."""
    wheels = sorted((REPO / "gpu" / "bundle" / "wheels").glob("*.whl"))
    if wheels:
        reqs = {bundle.wheel_name(p): bundle.requirements(p) for p in wheels}
        assert reqs == {n: w["requires"] for n, w in _recorded()["wheels"].items()}, \
            "the built wheels' requirements differ from gpu/manifest.json's record: re-run gpu/bundle.py --record"
        return reqs
    return {n: w["requires"] for n, w in _recorded()["wheels"].items()}


def test_every_declared_requirement_is_carried_preinstalled_or_explained():
    missing = []
    for wheel, reqs in _wheel_requirements().items():
        for r in reqs:
            req = Requirement(r)
            if req.marker is not None and not req.marker.evaluate(DEVICE_ENV):
                continue
            name = canonicalize_name(req.name)
            if name not in CARRIED | IMAGE | NOT_CARRIED | OPTIONAL:
                missing.append(f"{wheel} -> {r}")
    assert not missing, ("requirements neither carried, preinstalled, nor explained under 'not_carried' in "
                         f"gpu/manifest.json: {missing}")


def test_slimmed_wheel_installs_without_the_dropped_folder(tmp_path):
    whl = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    files = {"demo_pkg/__init__.py": "VALUE = 42\n", "studio/big.js": "x" * 5000,
             "demo_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\n",
             "demo_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + "demo_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr("demo_pkg-1.0.dist-info/RECORD", record)
    before, after = bundle.slim_wheel(whl, ["studio/"])
    assert after < before and bundle.slim_wheel(whl, ["studio/"]) == (after, after)  # idempotent
    with zipfile.ZipFile(whl) as z:
        assert not [n for n in z.namelist() if n.startswith("studio/")]
        assert "studio/" not in z.read("demo_pkg-1.0.dist-info/RECORD").decode()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    str(whl)], check=True, timeout=120)
    assert (target / "demo_pkg" / "__init__.py").exists() and not (target / "studio").exists()
