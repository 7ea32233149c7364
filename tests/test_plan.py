"""The paper's recipes (configs/paper/*.yaml) and the dry-run plan (fst_lab.plan): no model is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fst_lab.config import ConfigError, FSTConfig
from fst_lab.plan import describe_plan, estimate_memory, model_params, placeholders, refuse_placeholders

REPO = Path(__file__).resolve().parent.parent
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))


def test_the_paper_recipes_are_there():
    assert {p.stem for p in PAPER} == {"codeio", "math", "hover-hard", "continual"}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_recipe_holds_app_d_and_leaves_only_the_models_to_fill_in(path):
    c = FSTConfig.load(path)
    s, f = c.slow, c.fast
    # App. D (third-party reading): CISPO tau=4, beta=0.001, K=4, G=8, T=6, ~5 GEPA passes,
    # AdamW 0.9/0.999/1e-8, no weight decay, 10 warm-up steps, no clipping.
    assert (s.loss_type, s.epsilon_high, s.beta) == ("cispo", 4.0, 0.001)
    assert (c.population_size, c.num_generations, c.steps_per_cycle) == (4, 8, 6)
    assert (s.population_size, s.num_generations, f.population_size) == (4, 8, 4)
    assert f.budget_passes == 5.0
    assert (s.adam_beta1, s.adam_beta2, s.adam_epsilon, s.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert s.warmup_steps == 10 and not s.max_grad_norm and s.temperature == 1.0
    assert placeholders(c) == ["model", "fast.reflection_lm"]
    with pytest.raises(ConfigError) as e:
        refuse_placeholders(c, source=str(path))
    assert e.value.path == "model" and "placeholder" in str(e.value) and path.name in str(e.value)
    filled = c.replace(model="Qwen/Qwen3-8B", fast={**f.to_json(), "reflection_lm": "openai/gpt-4.1-mini"})
    refuse_placeholders(filled)  # nothing left to fill in


def test_continual_recipe_switches_every_200_steps_from_the_generic_harness():
    c = FSTConfig.load(REPO / "configs" / "paper" / "continual.yaml")
    stages = c.stage_list()
    assert [(st.task, st.steps, st.harness) for st in stages] == [
        ("hover", 200, "generic"), ("codeio", 200, "generic"), ("physics", 200, "generic")]
    assert c.cycles * c.cycle_plan().count("w") == 600
    assert (REPO / "harnesses" / "generic.yaml").exists()


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_dry_run_plan(path):
    c = FSTConfig.load(path)
    text = describe_plan(c)
    steps = c.cycles * 6
    for needle in (f"cycles: {c.cycles}", f"RL steps: {steps}", "rollouts per RL step: 32 problems x G=8 = 256",
                   "budget 160 rollouts", "reflection calls:", "GPU memory", "placeholder",
                   f"rollouts: {steps * 256:,} RL"):
        assert needle in text, f"{needle!r} not in:\n{text}"
    named = describe_plan(c.replace(model="Qwen/Qwen3-8B"))
    assert "8B params: ~" in named and "1.7B params" not in named


def test_dry_run_loads_no_model_and_no_torch():
    code = ("import sys; from fst_lab.cli import main; "  # the CLI's dry run also builds each stage's task, harness
            "main(['run', '--dry-run', 'configs/paper/continual.yaml']); "
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl', 'litellm', 'gepa') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "hover (level 3), RL steps 1-200" in out.stdout
    assert "physics (level 4), RL steps 401-600" in out.stdout


@pytest.mark.parametrize("edit,path", [
    ({"population_size": 3}, "population_size"),             # K must divide G
    ({"slow": {"loss_typ": "cispo"}}, "slow.loss_typ"),        # a typo is refused, not ignored
    ({"fast": {"budget_passes": 0}}, "fast.budget_passes"),
    ({"stages": [{"task": "hover", "steps": 200}, {"task": "chess", "steps": 200}]}, "stages[1].task"),
    ({"schedule": "p -> q*6"}, "schedule"),
])
def test_a_bad_recipe_is_refused(tmp_path, edit, path):
    d = yaml.safe_load((REPO / "configs" / "paper" / "codeio.yaml").read_text())
    d.update(edit)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as e:
        FSTConfig.load(bad)
    assert e.value.path == path, str(e.value)


@pytest.mark.parametrize("name,params", [
    ("Qwen/Qwen3-8B", 8e9), ("HuggingFaceTB/SmolLM2-135M-Instruct", 135e6), ("Qwen/Qwen3-30B-A3B", 30e9),
    ("Qwen/Qwen2.5-Coder-1.5B-Instruct", 1.5e9), ("meta-llama/Llama-3.1-8B", 8e9), ("smollm2-135m", 135e6),
    ("/models/my-finetune", None), ("gpt2", None)])
def test_model_size_from_name(name, params):
    assert model_params(name) == params


def test_memory_estimate_grows_with_size_and_full_finetuning():
    c = FSTConfig.load(REPO / "configs" / "paper" / "math.yaml")
    small, big = estimate_memory(1.7e9, c), estimate_memory(8e9, c)
    assert 0 < small.total < big.total
    assert big.weights == 16e9 and big.reference == 0.0  # bf16; LoRA's reference is the base itself
    full = estimate_memory(8e9, c.replace(slow={**c.slow.to_dict(), "lora": False}))
    assert full.trainable + full.optimizer > 10 * (big.trainable + big.optimizer) and full.reference == 16e9
    # a known point: Qwen3-8B, LoRA, 4-completion micro-batches of 3k tokens fits one 141 GB H200
    assert 30 * 2**30 < big.total < 120 * 2**30


def test_cli_dry_run_prints_the_plan_and_run_refuses_the_placeholders(tmp_path):
    cfg = str(REPO / "configs" / "paper" / "math.yaml")
    dry = subprocess.run([sys.executable, "-m", "fst_lab.cli", "run", "--dry-run", cfg], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "RL steps: 204" in dry.stdout and "GPU memory" in dry.stdout
    assert not (tmp_path / "runs").exists()  # nothing written
    real = subprocess.run([sys.executable, "-m", "fst_lab.cli", "run", cfg], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert real.returncode == 2 and not (tmp_path / "runs").exists()
    lines = real.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fst-lab: error: ") and "math.yaml:" in lines[0]
    assert "placeholder" in lines[0] and "model" in lines[0]
