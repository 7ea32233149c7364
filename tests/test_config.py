"""Run config: defaults from the paper, schedule strings, typed loop configs, and clear errors that write nothing."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fst_lab.config import ConfigError, FastConfig, FSTConfig, SlowConfig, help_table
from fst_lab.errors import FstLabError


def test_paper_defaults_and_help():
    c = FSTConfig()
    assert (c.steps_per_cycle, c.population_size, c.num_generations) == (6, 4, 8)
    assert c.cycle_plan() == ["p"] + ["w"] * 6
    table = help_table()
    assert "paper App. D: T=6" in table and "paper App. D: K=4" in table


@pytest.mark.parametrize("mode,plan", [("fst", ["p", "w", "w"]), ("rl", ["w", "w"]), ("gepa", ["p"])])
def test_mode_default_schedules(mode, plan):
    assert FSTConfig(mode=mode, steps_per_cycle=2).cycle_plan() == plan


def test_schedule_strings():
    c = FSTConfig(schedule="p -> w*3 -> p -> w")
    assert c.cycle_plan() == ["p", "w", "w", "w", "p", "w"]
    with pytest.raises(ConfigError, match="schedule: cannot parse 'x'"):
        FSTConfig(schedule="p -> x")
    with pytest.raises(ConfigError, match="mode 'rl'"):
        FSTConfig(mode="rl", schedule="p -> w")
    with pytest.raises(ConfigError, match="schedule: .* has no steps"):
        FSTConfig(schedule="w*0")


def test_consolidation_token_in_schedules():
    assert FSTConfig(schedule="p -> w*6 -> c*2").cycle_plan() == ["p"] + ["w"] * 6 + ["c", "c"]
    with pytest.raises(ConfigError, match="mode 'rl' evolves no harness"):
        FSTConfig(mode="rl", schedule="w*2 -> c")
    with pytest.raises(ConfigError, match="schedule: mode 'gepa' freezes the weights"):
        FSTConfig(mode="gepa", schedule="p -> c")


def test_k_must_divide_g():
    with pytest.raises(ConfigError, match=r"population_size: K=3 must divide num_generations G=8"):
        FSTConfig(population_size=3)


def test_unknown_task_and_bad_stages():
    with pytest.raises(ConfigError, match="task: unknown task 'chess'"):
        FSTConfig(task="chess")
    with pytest.raises(ConfigError, match=r"stages\[1\]\.task: unknown task 'nope'"):
        FSTConfig(stages=[{"task": "hover", "steps": 2}, {"task": "nope"}])
    with pytest.raises(ConfigError, match=r"stages\[0\].steps"):
        FSTConfig(stages=[{"task": "hover"}, {"task": "math"}])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.stpes: unknown key; did you mean steps\?"):
        FSTConfig(stages=[{"task": "hover", "stpes": 3}])
    with pytest.raises(ConfigError, match=r"stages\[0\]: must be a mapping"):
        FSTConfig(stages=["hover"])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.level: expected an integer, got 'one'"):
        FSTConfig(stages=[{"task": "hover", "level": "one"}])


# ---------------------------------------------------------------------------- one K, G, seed for both loops
def test_k_g_seed_reach_both_loops():
    c = FSTConfig(population_size=2, num_generations=6, seed=7, max_new_tokens=48, prompts_per_step=3,
                  report_to="tensorboard", fast={"budget_passes": 2}, slow={"beta": 0.0})
    assert isinstance(c.fast, FastConfig) and isinstance(c.slow, SlowConfig)
    assert (c.fast.population_size, c.fast.seed, c.fast.max_new_tokens, c.fast.budget_passes) == (2, 7, 48, 2)
    assert (c.slow.population_size, c.slow.num_generations, c.slow.seed, c.slow.prompts_per_step,
            c.slow.report_to, c.slow.max_completion_length, c.slow.beta) == (2, 6, 7, 3, "tensorboard", 48, 0.0)
    # the same through YAML, and after replace()
    c2 = FSTConfig.from_dict(yaml.safe_load(c.to_yaml()))
    assert (c2.fast.population_size, c2.slow.num_generations, c2.slow.seed) == (2, 6, 7)
    c3 = c.replace(population_size=3, seed=11)
    assert (c3.fast.population_size, c3.slow.population_size, c3.fast.seed, c3.slow.seed) == (3, 3, 11, 11)
    # a consistent repeat inside fast/slow is fine (it is the same value)
    assert FSTConfig(population_size=2, num_generations=4, fast={"population_size": 2}).fast.population_size == 2


def test_session_loops_get_the_typed_configs(tmp_path):
    from fst_lab.session import Session

    s = Session({"population_size": 2, "num_generations": 4, "seed": 5, "runs_root": str(tmp_path)}, progress=False)
    try:
        assert s.fast_config() is s.config.fast and s.slow_config() is s.config.slow
        assert (s.fast_config().population_size, s.fast_config().seed) == (2, 5)
        assert (s.slow_config().population_size, s.slow_config().num_generations, s.slow_config().seed) == (2, 4, 5)
    finally:
        s.close()


def test_consolidate_is_typed_and_gets_seed_and_tokens_from_the_top():
    from fst_lab.config import ConsolidateConfig

    c = FSTConfig(seed=4, max_new_tokens=32, consolidate={"method": "sft", "steps": 2})
    assert isinstance(c.consolidate, ConsolidateConfig)
    assert (c.consolidate.seed, c.consolidate.max_new_tokens, c.consolidate.method) == (4, 32, "sft")
    assert FSTConfig.from_dict(yaml.safe_load(c.to_yaml())) == c
    with pytest.raises(ConfigError, match=r"^consolidate\.seed: 3 conflicts with seed: 0"):
        FSTConfig(consolidate={"seed": 3})
    with pytest.raises(ConfigError, match=r"^consolidate\.method: must be one of"):
        FSTConfig(consolidate={"method": "distill"})
    with pytest.raises(ConfigError, match=r"^consolidate\.stepz: unknown key; did you mean steps\?"):
        FSTConfig(consolidate={"stepz": 1})


def test_typed_loop_configs_from_python():
    c = FSTConfig(population_size=2, num_generations=4, fast=FastConfig(budget_passes=2.5),
                  slow=SlowConfig(learning_rate=1e-3, num_generations=4, population_size=2))
    assert (c.fast.population_size, c.fast.budget_passes, c.slow.learning_rate) == (2, 2.5, 1e-3)
    with pytest.raises(ConfigError, match=r"^fast\.population_size: 3 conflicts with population_size: 2"):
        FSTConfig(population_size=2, num_generations=4, fast=FastConfig(population_size=3))
    c.population_size, c.num_generations = 4, 8  # a changed top level re-flows on validate()
    c.validate()
    assert (c.fast.population_size, c.slow.population_size, c.slow.num_generations) == (4, 4, 8)


BAD = [  # (config, the start of the message)
    ({"fast": {"population_size": 3}}, "fast.population_size: 3 conflicts with population_size: 4 at the top level"),
    ({"slow": {"population_size": 2}}, "slow.population_size: 2 conflicts with population_size: 4"),
    ({"slow": {"num_generations": 4}}, "slow.num_generations: 4 conflicts with num_generations: 8"),
    ({"slow": {"seed": 1}}, "slow.seed: 1 conflicts with seed: 0"),
    ({"fast": {"seed": 1}, "seed": 2}, "fast.seed: 1 conflicts with seed: 2"),
    ({"slow": {"prompts_per_step": 8}}, "slow.prompts_per_step: 8 conflicts with prompts_per_step: 2"),
    ({"slow": {"report_to": "wandb"}}, "slow.report_to: 'wandb' conflicts with report_to: 'none'"),
    ({"slow": {"max_completion_length": 64}}, "slow.max_completion_length: 64 conflicts with max_new_tokens: null"),
    ({"fast": {"budget_pases": 2}}, "fast.budget_pases: unknown key; did you mean budget_passes?"),
    ({"slow": {"learning_rat": 1e-4}}, "slow.learning_rat: unknown key; did you mean learning_rate?"),
    ({"slow": {"budget_passes": 2}}, "slow.budget_passes: unknown key here; it belongs under fast:"),
    ({"fast": {"num_generations": 8}}, "fast.num_generations: unknown key here; it belongs at the top level"),
    ({"beta": 0.01}, "beta: unknown key here; it belongs under slow:"),
    ({"cylces": 2}, "cylces: unknown key; did you mean cycles?"),
    ({"stages": [{"task": "math", "stpes": 3}]}, "stages[0].stpes: unknown key; did you mean steps?"),
    ({"fast": {"budget_passes": "lots"}}, "fast.budget_passes: expected a number, got 'lots'"),
    ({"fast": {"bootstrap": "yes"}}, "fast.bootstrap: expected true or false, got 'yes'"),
    ({"slow": {"lora_r": 8.5}}, "slow.lora_r: expected an integer, got 8.5"),
    ({"slow": {"lora_target_modules": "q_proj"}}, "slow.lora_target_modules: expected a list of strings"),
    ({"cycles": "two"}, "cycles: expected an integer, got 'two'"),
    ({"fast": [1, 2]}, "fast: expected a mapping of FastConfig settings"),
    ({"slow": {"loss_type": "ppo"}}, "slow.loss_type: must be one of"),
    ({"fast": {"reflection_lm": "gpt4"}}, "fast.reflection_lm: must be a LiteLLM 'provider/model' string"),
    ({"num_generations": 1, "population_size": 1}, "num_generations: G must be >= 2"),
    # numbers out of range (a negative rate used to start a run)
    ({"slow": {"learning_rate": -1}}, "slow.learning_rate: must be > 0, got -1"),
    ({"slow": {"learning_rate": float("nan")}}, "slow.learning_rate: must be > 0, got nan"),
    ({"slow": {"beta": -0.001}}, "slow.beta: must be >= 0, got -0.001"),
    ({"slow": {"adam_beta2": 1.0}}, "slow.adam_beta2: must be in [0, 1), got 1.0"),
    ({"slow": {"lora_dropout": 1.5}}, "slow.lora_dropout: must be in [0, 1), got 1.5"),
    ({"slow": {"warmup_steps": -2}}, "slow.warmup_steps: must be >= 0, got -2"),
    ({"slow": {"rollout_batch_size": 0}}, "slow.rollout_batch_size: must be >= 1, got 0"),
    ({"slow": {"vllm_gpu_memory_utilization": 0}}, "slow.vllm_gpu_memory_utilization: must be in (0, 1], got 0"),
    ({"fast": {"reflection_timeout": 0}}, "fast.reflection_timeout: must be > 0, got 0"),
    ({"fast": {"reflection_max_tokens": 0}}, "fast.reflection_max_tokens: must be >= 1, got 0"),
    ({"fast": {"temperature": -1.0}}, "fast.temperature: must be >= 0, got -1.0"),
    ({"consolidate": {"max_grad_norm": -1}}, "consolidate.max_grad_norm: must be >= 0, got -1"),
]


@pytest.mark.parametrize("bad,msg", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_is_refused_with_the_field_path_and_no_run_dir(tmp_path, bad, msg):
    from fst_lab.session import Session

    root = tmp_path / "runs"
    with pytest.raises(ConfigError) as ei:
        Session({**bad, "runs_root": str(root)}, progress=False)
    assert str(ei.value).startswith(msg), str(ei.value)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, FstLabError) and isinstance(ei.value, ValueError)
    assert not root.exists(), "a refused config must not create a run directory"


def test_bad_config_file_names_file_line_and_field(tmp_path):
    from fst_lab.session import Session

    p = tmp_path / "c.yaml"
    p.write_text("mode: fst\ntask: math\npopulation_size: 2\nnum_generations: 4\nfast:\n  budget_passes: 2\n"
                 f"  budget_pases: 3\nruns_root: {tmp_path / 'runs'}\n")
    with pytest.raises(ConfigError, match=rf"^{p}:7: fast\.budget_pases: unknown key; did you mean budget_passes\?$"):
        FSTConfig.load(p)
    with pytest.raises(ConfigError, match=rf"^{p}:7: fast\.budget_pases"):
        Session(p, progress=False)
    p.write_text("population_size: 2\nnum_generations: 4\nslow:\n  loss_type: ppo\n")
    with pytest.raises(ConfigError, match=rf"^{p}:4: slow\.loss_type: must be one of"):
        FSTConfig.load(p)
    p.write_text("stages:\n  - {task: hover, steps: 2}\n  - task: nope\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: stages\[1\]\.task: unknown task 'nope'"):
        FSTConfig.load(p)
    # a key given twice: the later one would silently win over the one a person edited
    p.write_text("mode: fst\ncycles: 2\nslow:\n  beta: 0.0\n  beta: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{p}:5: invalid YAML: duplicate key 'beta' \(first on line 4\)$"):
        FSTConfig.load(p)
    p.write_text("mode: fst\ncycles: 2\nslow:\n  beta: 0.0\ncycles: 3\n")
    with pytest.raises(ConfigError, match=rf"^{p}:5: invalid YAML: duplicate key 'cycles' \(first on line 2\)$"):
        FSTConfig.load(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.yaml"]


def test_yaml_round_trip_and_file_errors(tmp_path):
    c = FSTConfig(mode="rl", cycles=3, stages=[{"task": "hover", "steps": 2}, {"task": "math", "steps": 2}],
                  population_size=2, num_generations=4, seed=3, max_new_tokens=32,
                  fast={"budget_passes": 2, "reflection_max_tokens": 64}, slow={"learning_rate": "1e-4"})
    p = tmp_path / "c.yaml"
    p.write_text(c.to_yaml())
    loaded = FSTConfig.load(p)
    assert loaded == c and loaded.to_yaml() == c.to_yaml()
    assert loaded.slow.learning_rate == 1e-4  # YAML 1.1 reads '1e-4' as text; the config reads it as a number
    d = yaml.safe_load(c.to_yaml())
    assert isinstance(d["fast"], dict) and "population_size" not in d["fast"] and "seed" not in d["slow"]
    # an older run's config.yaml (overrides only) still loads
    p.write_text(yaml.safe_dump({"mode": "fst", "fast": {}, "slow": {"learning_rate": 0.001}}))
    assert FSTConfig.load(p).slow.learning_rate == 0.001
    p.write_text("mode: fst\ncycles: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        FSTConfig.load(p)
    p.write_text(yaml.safe_dump({"mode": "fst", "cylces": 2}, sort_keys=False))
    with pytest.raises(ConfigError, match=r"c.yaml:2: cylces: unknown key; did you mean cycles\?"):
        FSTConfig.load(p)
    p.write_text(yaml.safe_dump({"cycles": "two"}))
    with pytest.raises(ConfigError, match="c.yaml:1: cycles: expected an integer"):
        FSTConfig.load(p)
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        FSTConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        FSTConfig.load(tmp_path)


def test_to_dict_is_plain_data():
    d = FSTConfig().to_dict()
    assert all(not dataclasses.is_dataclass(v) for v in d.values())
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_bad_config_writes_nothing(tmp_path):
    from fst_lab.session import Session

    for bad in ({"population_size": 3}, {"task": "chess"}, {"stages": [{"task": "x"}]}, {"harness": "missing"},
                {"fast": {"population_size": 2}}, {"slow": {"stpes": 1}}):
        with pytest.raises(ConfigError):
            Session({**bad, "runs_root": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []


def test_config_docs_are_generated_from_the_help_texts():
    from pathlib import Path

    from fst_lab.config import config_doc

    doc = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"
    assert doc.read_text(encoding="utf-8") == config_doc() + "\n", (
        'docs/CONFIG.md is stale: python -c "from fst_lab.config import config_doc; print(config_doc())" '
        "> docs/CONFIG.md")
    for cls in (FSTConfig, FastConfig, SlowConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
