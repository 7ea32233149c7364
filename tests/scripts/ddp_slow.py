"""Two-process DDP smoke run of the slow loop (driven by tests/test_distributed.py).

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/ddp_slow.py OUT_DIR   # on a CPU-only box

Each process writes OUT_DIR/rank{i}.json (what it trained on, its metrics and a checksum of its LoRA
weights) and both write one shared checkpoint to OUT_DIR/ckpt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fst_lab.harness import Harness
from fst_lab.models import tiny_policy
from fst_lab.slow import SlowConfig, SlowLearner
from fst_lab.tasks.toy import ParityTask

REPO = Path(__file__).resolve().parents[2]


def main(out: Path) -> None:
    seed = Harness.load(REPO / "harnesses" / "math.yaml")
    pop = [seed.with_components({"system_prompt": f"You are {n}.", "few_shot": "[]"}, origin="manual") for n in "AB"]
    cfg = SlowConfig(num_generations=4, population_size=2, prompts_per_step=2, max_completion_length=4,
                     warmup_steps=0, learning_rate=1e-2, kl_probe_size=0, seed=0)
    with SlowLearner(tiny_policy(), ParityTask(), pop, cfg, output_dir=out / "trainer") as learner:
        acc = learner.trainer.accelerator
        seen = []
        records = []
        for i in range(2):
            if i == 1:  # each process proposes its own population; the main process's wins everywhere
                mine = [seed.with_components({"system_prompt": f"You are {n}{acc.process_index}.", "few_shot": "[]"},
                                             origin="manual") for n in "CD"]
                learner.set_population(mine, from_main_process=True)
            records += learner.step(1)
            seen.append([[t.example_id, t.messages[0]["content"]] for t in learner.last_trajectories])
        lora = {k: float(v.detach().double().sum()) for k, v in learner.trainer.model.named_parameters()
                if "lora" in k}
        learner.save_state(out / "ckpt")
        info = {"rank": acc.process_index, "world": acc.num_processes, "global_step": learner.global_step,
                "samples_seen": learner.samples_seen, "seen": seen, "lora": lora,
                "rewards": [r["reward"] for r in records], "per_harness": [r["reward/h0"] for r in records]}
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
