"""Run config: defaults from the paper, schedule strings, and clear errors that write nothing."""

from __future__ import annotations

import pytest
import yaml

from fst_lab.config import ConfigError, FSTConfig, help_table


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
    with pytest.raises(ConfigError, match="cannot parse 'x'"):
        FSTConfig(schedule="p -> x")
    with pytest.raises(ConfigError, match="mode 'rl'"):
        FSTConfig(mode="rl", schedule="p -> w")


def test_k_must_divide_g():
    with pytest.raises(ConfigError, match=r"population_size \(K=3\) must divide num_generations \(G=8\)"):
        FSTConfig(population_size=3)


def test_unknown_task_and_bad_stages():
    with pytest.raises(ConfigError, match="task: unknown task 'chess'"):
        FSTConfig(task="chess")
    with pytest.raises(ConfigError, match=r"stages\[1\]: unknown task 'nope'"):
        FSTConfig(stages=[{"task": "hover", "steps": 2}, {"task": "nope"}])
    with pytest.raises(ConfigError, match=r"stages\[0\].steps"):
        FSTConfig(stages=[{"task": "hover"}, {"task": "math"}])
    with pytest.raises(ConfigError, match=r"stages\[0\]: unknown keys \['stpes'\]"):
        FSTConfig(stages=[{"task": "hover", "stpes": 3}])
    with pytest.raises(ConfigError, match=r"stages\[0\]: must be a mapping"):
        FSTConfig(stages=["hover"])


def test_yaml_round_trip_and_file_errors(tmp_path):
    c = FSTConfig(mode="rl", cycles=3, stages=[{"task": "hover", "steps": 2}, {"task": "math", "steps": 2}])
    p = tmp_path / "c.yaml"
    p.write_text(c.to_yaml())
    assert FSTConfig.load(p) == c
    p.write_text("mode: fst\ncycles: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        FSTConfig.load(p)
    p.write_text(yaml.safe_dump({"mode": "fst", "cylces": 2}))
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config keys \['cylces'\]"):
        FSTConfig.load(p)
    p.write_text(yaml.safe_dump({"cycles": "two"}))
    with pytest.raises(ConfigError, match="cycles: expected an integer"):
        FSTConfig.load(p)


def test_bad_config_writes_nothing(tmp_path):
    from fst_lab.session import Session

    for bad in ({"population_size": 3}, {"task": "chess"}, {"stages": [{"task": "x"}]}, {"harness": "missing"}):
        with pytest.raises(ConfigError):
            Session({**bad, "runs_root": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
