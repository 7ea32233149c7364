#!/usr/bin/env bash
# The one-call GPU check (docs/GPU.md says how a session with a device machine runs it):
#   bash gpu/check.sh            # on the device machine, with gpu/bundle carried (`make gpu-bundle` here)
#   bash gpu/check.sh --cpu      # the CPU branch (what tests/test_gpu_check.py runs; no install)
# Installs the carried wheels offline into a target dir, then runs gpu/check.py, which prints a JSON
# report (also written to $OUT/gpu-check.json when $OUT is set) and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}   # the device machine's python3 holds torch; on a CPU, the project's venv
if [[ -z "${PYTHON:-}" && " $* " == *" --cpu "* && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
SITE=${FST_GPU_SITE:-/tmp/fst-gpu-site}
# Seconds for everything after the install. 240 leaves room for a rerun within a session's 15 device minutes
# (docs/GPU.md: timeout_s 300 for install + checks); the checks on a tiny model need far less. The issue's ceiling is 480 (8 min).
LIMIT=${FST_GPU_CHECK_LIMIT:-240}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ " $* " != *" --cpu "* ]]; then
  if ! ls gpu/bundle/wheels/*.whl >/dev/null 2>&1; then
    echo '{"ok": false, "failed": ["install"], "detail": "gpu/bundle/wheels is missing: run `make gpu-bundle` and carry gpu/bundle"}'
    exit 1
  fi
  t0=$(date +%s)
  # --no-deps: the bundle holds exactly what the image lacks (gpu/manifest.json says why each one).
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        gpu/bundle/wheels/*.whl >&2; then
    echo '{"ok": false, "failed": ["install"], "detail": "pip install of the carried wheels failed (see stderr)"}'
    exit 1
  fi
  echo "[gpu-check] installed $(ls gpu/bundle/wheels/*.whl | wc -l) wheels into $SITE in $(( $(date +%s) - t0 ))s" >&2
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
args=("$@")
if [[ -n "${OUT:-}" ]]; then args+=(--out "$OUT/gpu-check.json"); fi
timeout --kill-after=20 "$LIMIT" "$PY" gpu/check.py --budget $(( LIMIT - 20 )) "${args[@]}"
rc=$?
if [[ $rc == 124 || $rc == 137 ]]; then
  echo "{\"ok\": false, \"failed\": [\"timeout\"], \"detail\": \"gpu/check.py ran past ${LIMIT}s\"}"
fi
exit $rc
