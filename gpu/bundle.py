"""Build gpu/bundle/: what the one-call GPU check carries to the device machine (``make gpu-bundle``).

    python gpu/bundle.py            # download + slim the wheels, write the tokenizer folder, check the size
    python gpu/bundle.py --record   # the same, then record sizes and requirements in gpu/manifest.json

The device machine (see docs/GPU.md) has Python 3.12, torch, transformers 5.17, peft, accelerate and
Triton, no network, and takes at most 64 MiB per call (working tree + carried folders). This script
fills ``gpu/bundle/`` (git-ignored) with:

- ``wheels/``: the packages of ``gpu/manifest.json`` (``pip download --no-deps --only-binary=:all:``
  for CPython 3.12 manylinux x86_64). Two wheels are slimmed: ``unsloth`` without ``studio/`` (Unsloth
  Studio's web app, 27 of its 31 MB) and ``litellm`` without its proxy's static admin UI. RECORD is
  rewritten to match, so pip installs them like any wheel.
- ``model/``: the embedded SmolLM2 tokenizer with its chat template. The tiny random-init weights
  are generated on the device by ``gpu/check.py`` (seeded; carrying them would cost MiBs for nothing).
- ``BUNDLE.json``: every file with its size and sha256, and the carried total (bundle + working tree).

It stops with an error when the carried total exceeds the manifest's ``limit_mib`` (60).

``--record`` writes each wheel's size and declared requirements into the manifest's ``measured``
section (commit it): ``tests/test_gpu_check.py`` checks the size limit and the requirement coverage
from that record where no bundle is built (CI), and against the real wheels where one is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "manifest.json"
BUNDLE = HERE / "bundle"
MIB = 2**20


def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


def download(manifest: dict, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {norm(w["name"]) for w in manifest["wheels"]}
    for stale in dest.glob("*.whl"):  # a version bump leaves the old wheel behind: two versions stop pip
        if wheel_name(stale) not in wanted or not any(
                stale.name.split("-")[1] == w["version"] for w in manifest["wheels"] if norm(w["name"]) == wheel_name(stale)):
            stale.unlink()
    present = {(wheel_name(p), p.name.split("-")[1]) for p in dest.glob("*.whl")}
    todo = [w for w in manifest["wheels"] if (norm(w["name"]), w["version"]) not in present]
    if not todo:  # (slimmed wheels no longer match the index's hash: never re-download what is here)
        print("gpu-bundle: all", len(manifest["wheels"]), "wheels present", flush=True)
        return
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           manifest["python"], "--implementation", "cp", "-d", str(dest), "-q"]
    for p in manifest["platforms"]:
        cmd += ["--platform", p]
    cmd += [f"{w['name']}=={w['version']}" for w in todo]
    print("gpu-bundle: pip download of", len(todo), "wheels", flush=True)
    subprocess.run(cmd, check=True)


def slim_wheel(path: Path, drop: list[str]) -> tuple[int, int]:
    """Rewrite ``path`` without the entries under ``drop`` (and their RECORD lines). Returns (before, after) bytes."""
    before = path.stat().st_size
    tmp = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = [i for i in src.infolist() if not any(i.filename.startswith(d) for d in drop)]
        if len(kept) == len(src.infolist()):
            tmp.unlink(missing_ok=True)
            return before, before  # already slim
        for info in kept:
            if info.filename == record_name:
                continue
            dst.writestr(info, src.read(info.filename))
        lines = [ln for ln in src.read(record_name).decode().splitlines()
                 if ln and not any(ln.startswith(d) for d in drop)]
        dst.writestr(record_name, "\n".join(lines) + "\n")
    tmp.replace(path)
    return before, path.stat().st_size


def write_model(dest: Path) -> None:
    """The embedded tokenizer + chat template (weights are made on the device, see gpu/check.py)."""
    if (dest / "tokenizer_config.json").exists():
        return
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from fst_lab.models import ensure_converted

    tok = AutoTokenizer.from_pretrained(str(ensure_converted()))
    if not tok.chat_template:
        raise SystemExit("gpu-bundle: the embedded tokenizer has no chat template")
    dest.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(dest)


def worktree_bytes() -> int:
    """Bytes of what a device call sends besides carried folders: tracked + untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sum((REPO / f).stat().st_size for f in out.split("\0") if f and (REPO / f).is_file())


def sha256(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).decode().rstrip("=")


def inventory(bundle: Path, manifest: dict) -> dict:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "BUNDLE.json")
    entries = [{"path": str(p.relative_to(bundle)), "bytes": p.stat().st_size, "sha256": sha256(p)} for p in files]
    bundle_bytes = sum(e["bytes"] for e in entries)
    tree = worktree_bytes()
    return {"limit_mib": manifest["limit_mib"], "bundle_bytes": bundle_bytes, "worktree_bytes": tree,
            "carried_bytes": bundle_bytes + tree, "carried_mib": round((bundle_bytes + tree) / MIB, 2),
            "files": entries}


def requirements(path: Path) -> list[str]:
    """A wheel's Requires-Dist lines that apply without extras."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    reqs = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r and "extra==" not in r]


def record(manifest: dict, inv: dict, wheels: Path) -> None:
    by_name = {wheel_name(p): p for p in wheels.glob("*.whl")}
    manifest["measured"] = {
        "date": __import__("time").strftime("%Y-%m-%d"),
        "bundle_bytes": inv["bundle_bytes"],
        "model_bytes": sum(e["bytes"] for e in inv["files"] if e["path"].startswith("model/")),
        "wheels": {n: {"file": p.name, "bytes": p.stat().st_size, "requires": requirements(p)}
                   for n, p in sorted(by_name.items())},
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"gpu-bundle: recorded sizes and requirements in {MANIFEST.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    manifest = load_manifest()
    wheels = BUNDLE / "wheels"
    download(manifest, wheels)
    for w in manifest["wheels"]:
        if w.get("drop"):
            (path,) = [p for p in wheels.glob("*.whl") if wheel_name(p) == norm(w["name"])]
            b, a = slim_wheel(path, w["drop"])
            print(f"gpu-bundle: slimmed {path.name}: {b / MIB:.1f} -> {a / MIB:.1f} MiB (dropped {w['drop']})")
    names = sorted(wheel_name(p) for p in wheels.glob("*.whl"))
    missing = sorted({norm(w["name"]) for w in manifest["wheels"]} - set(names))
    if missing or len(names) != len(set(names)):
        raise SystemExit(f"gpu-bundle: wheels missing {missing} or duplicated in {wheels}")
    write_model(BUNDLE / "model")
    shutil.copy(MANIFEST, BUNDLE / "manifest.json")
    inv = inventory(BUNDLE, manifest)
    (BUNDLE / "BUNDLE.json").write_text(json.dumps(inv, indent=1) + "\n")
    if "--record" in argv:
        record(manifest, inv, wheels)
    print(f"gpu-bundle: {len(inv['files'])} files, bundle {inv['bundle_bytes'] / MIB:.1f} MiB + working tree "
          f"{inv['worktree_bytes'] / MIB:.1f} MiB = {inv['carried_mib']} MiB carried (limit {manifest['limit_mib']} MiB)")
    if inv["carried_bytes"] > manifest["limit_mib"] * MIB:
        print("gpu-bundle: OVER THE LIMIT", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
