"""The slow loop under ``accelerate launch`` (DDP, 2 CPU processes, gloo) with no code change."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    # `--cpu` would start ONE process (accelerate's simple launcher); `--multi_gpu` uses torchrun, and
    # TrainingArguments(use_cpu=True) turns the two processes into a MULTI_CPU (gloo) group.
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "tests" / "scripts" / "ddp_slow.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["global_step"] == r1["global_step"] == 2
    # 2 problems per step, one per process; every rollout of a problem stays on its process
    for step in range(2):
        ex0 = {e for e, _ in r0["seen"][step]}
        ex1 = {e for e, _ in r1["seen"][step]}
        assert len(ex0) == len(ex1) == 1 and ex0 != ex1
        names = ("A", "B") if step == 0 else ("C0", "D0")  # step 2: rank 0's population, broadcast
        for r in (r0, r1):
            assert [s for _, s in r["seen"][step]] == [f"You are {names[0]}."] * 2 + [f"You are {names[1]}."] * 2
    # DDP kept the replicas identical; rewards were gathered across processes
    assert r0["lora"] == r1["lora"]
    assert r0["rewards"] == r1["rewards"] and r0["per_harness"] == r1["per_harness"]
    assert r0["samples_seen"] == r1["samples_seen"] == 2 * 2 * 4
    ckpt = tmp_path / "ckpt"
    for f in ("fst_state.json", "optimizer.pt", "scheduler.pt", "trainer_state.json", "adapter_model.safetensors",
              "rng_state_0.pth", "rng_state_1.pth"):
        assert (ckpt / f).exists(), f
