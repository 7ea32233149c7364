"""The GPU library set on a CPU: overlay requirements-gpu.txt's pure-Python pins on the project's venv.

    python gpu/gpuset.py install .venv/gpuset-site     # what `make test-gpu-set` runs first
    PYTHONPATH=.venv/gpuset-site python -m pytest -p tests.gpu_set_plugin ...

requirements-gpu.txt pins the versions Unsloth accepts (transformers 5.17.0, TRL 1.15.0, datasets
4.8.5), which differ from the CPU pins in pyproject.toml. Installing them into the venv would break
it, and a second full venv costs gigabytes and minutes. Instead, the libraries whose pinned version
differs from the venv's are installed ``--no-deps`` into a small target directory that goes first on
``PYTHONPATH``. Their own requirements are then checked against the combined environment; any that
the venv does not satisfy (e.g. datasets 4.8.5 caps fsspec) is added to the overlay at the version
recorded in docs/gpu-resolution.json. CUDA-only packages (torch's CUDA build, unsloth, unsloth_zoo,
vllm) are never installed: CPU tests cannot use them.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CUDA_ONLY = {"torch", "unsloth", "unsloth-zoo", "vllm", "xformers", "bitsandbytes", "triton"}


def pins(path: Path = REPO / "requirements-gpu.txt") -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            req = Requirement(line)
            (spec,) = req.specifier
            out[canonicalize_name(req.name)] = spec.version
    return out


def installed(target: Path | None = None) -> dict[str, str]:
    """Installed distributions; the overlay's win, as they do on PYTHONPATH."""
    paths = ([str(target)] if target and target.exists() else []) + sys.path
    seen: dict[str, str] = {}
    for dist in md.distributions(path=paths):
        seen.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return seen


def unmet(target: Path) -> list[tuple[str, str, str | None]]:
    """(requirement, needed by, installed version) for the overlay's unmet requirements."""
    env = installed(target)
    marker_env = default_environment()
    marker_env["extra"] = ""
    bad = []
    for dist in md.distributions(path=[str(target)]):
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is not None and not req.marker.evaluate(marker_env):
                continue
            have = env.get(canonicalize_name(req.name))
            if have is None or not req.specifier.contains(Version(have), prereleases=True):
                bad.append((str(req), dist.metadata["Name"], have))
    return bad


def pip_target(target: Path, specs: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                    str(target), *specs], check=True)


def install(target: Path) -> int:
    resolved = json.loads((REPO / "docs" / "gpu-resolution.json").read_text())["packages"]
    want = {n: v for n, v in pins().items() if n not in CUDA_ONLY}
    have = installed()
    differ = {n: v for n, v in want.items() if have.get(n) != v}
    # The overlay is rebuilt only when it doesn't hold exactly these versions already.
    stamp = target / ".gpuset.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("differ") == differ and not unmet(target):
        print(f"gpu-set: overlay {target} is up to date: {differ}")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    print(f"gpu-set: overlay {target}: {differ}", flush=True)
    pip_target(target, [f"{n}=={v}" for n, v in differ.items()])
    for _ in range(3):  # add what the overlaid versions need and the venv lacks (at the GPU set's versions)
        bad = unmet(target)
        fix = {}
        for req, by, ver in bad:
            name = canonicalize_name(Requirement(req).name)
            if name in resolved and Requirement(req).specifier.contains(resolved[name], prereleases=True):
                fix[name] = resolved[name]
        if not fix:
            break
        print(f"gpu-set: adding {fix} (needed by the overlay)", flush=True)
        pip_target(target, [f"{n}=={v}" for n, v in fix.items()])
    bad = unmet(target)
    for req, by, ver in bad:
        print(f"gpu-set: WARNING {by} needs {req}, have {ver}", file=sys.stderr)
    stamp.write_text(json.dumps({"differ": differ}) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "install":
        print(__doc__)
        return 2
    return install(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
