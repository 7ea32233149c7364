"""One documented config for a whole FST run (YAML file <-> dataclass), baselines one flag away.

    mode: fst            # fst | rl (fixed seed harness) | gepa (frozen weights)
    task: math
    cycles: 2
    steps_per_cycle: 6   # T (paper App. D)
    population_size: 4   # K (paper App. D)
    num_generations: 8   # G (paper App. D); K must divide G
    schedule: "p -> w*6" # optional: per-cycle recipe, DSPy-BetterTogether style

Schedules: a cycle is a sequence of ``p`` (a fast/prompt step: one GEPA round) and ``w`` (a slow/weights
step: one RL optimizer step), joined by ``->``; ``w*6`` repeats. Defaults per mode: fst ``p -> w*T``,
rl ``w*T``, gepa ``p``.

Continual learning: ``stages`` is a list of ``{task, level, steps}``; the run switches task after each
stage's RL steps (paper: HoVer -> CodeIO -> Physics every 200 steps, task-agnostic seed harness).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

MODES = ("fst", "rl", "gepa")


class ConfigError(ValueError):
    """The run config is invalid. The message names the field (and the file, when loaded from one)."""


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class Stage:
    """One stage of a (continual) run: a task, its difficulty, and how many RL steps it lasts."""

    task: str = _f("math", "Task family: math | codeio | physics | hover | jsonl.")
    level: int = _f(1, "Difficulty level of the built-in generator.")
    steps: int | None = _f(None, "RL steps in this stage (None: the whole run).")
    harness: str | None = _f(None, "Seed harness for this stage (name in harnesses/ or a path). None: the run's.")
    task_kwargs: dict = _f({}, "Extra constructor arguments for the task (e.g. path/scorer for jsonl).")


@dataclass
class FSTConfig:
    """Everything a run needs. Defaults follow the paper (App. D, third-party reading) where it has one.

    Groups: *what* (mode, model, task/stages, harness), *schedule* (cycles, T, K, G, schedule string),
    *data* (examples per cycle, eval), *fast loop* (``fast``: FastConfig overrides), *slow loop*
    (``slow``: SlowConfig overrides), *bookkeeping* (seed, runs_root, checkpoints, tracking).
    """

    # what
    mode: str = _f("fst", "fst (co-evolve harness and weights) | rl (fixed seed harness) | gepa (frozen weights).")
    model: str = _f("smollm2-135m", "Policy: short name (embedded SmolLM2-135M-Instruct), local path or cached HF id.")
    task: str = _f("math", "Task when `stages` is empty.")
    level: int = _f(1, "Difficulty level when `stages` is empty.")
    task_kwargs: dict = _f({}, "Extra task constructor arguments.")
    harness: str | None = _f(None, "Seed harness (name in harnesses/ or path). None: the task's own harness.")
    stages: list = _f([], "Continual learning: list of {task, level, steps, harness}. Empty: one stage.")
    # schedule
    cycles: int = _f(2, "Number of fast/slow cycles for `run()`.")
    steps_per_cycle: int = _f(6, "T: RL steps between GEPA rounds (paper App. D: T=6).")
    population_size: int = _f(4, "K: harnesses in the population (paper App. D: K=4).")
    num_generations: int = _f(8, "G: rollouts per problem, split G/K per harness (paper App. D: G=8).")
    schedule: str | None = _f(None, "Per-cycle recipe, e.g. 'p -> w*6'. None: the mode's default.")
    # data
    prompts_per_step: int = _f(2, "Problems per RL step (ours: CPU scale; paper uses far larger batches).")
    fast_train_size: int = _f(8, "Examples GEPA reflects on per round (ours: CPU scale).")
    fast_val_size: int = _f(8, "Examples GEPA selects the Pareto front on per round (ours: CPU scale).")
    eval_size: int = _f(16, "Validation examples for `evaluate()`.")
    eval_k: int = _f(1, "Samples per validation example for mean@k.")
    eval_every_cycle: bool = _f(True, "Evaluate on validation at the end of each cycle.")
    max_new_tokens: int | None = _f(None, "Override the harness's max_new_tokens for all rollouts (None: harness).")
    # loops
    fast: dict = _f({}, "FastConfig overrides (fst_lab.fast.FastConfig): budget_passes, reflection_lm, ...")
    slow: dict = _f({}, "SlowConfig overrides (fst_lab.slow.SlowConfig): loss_type, beta, learning_rate, ...")
    # bookkeeping
    seed: int = _f(0, "Seed for data, sampling and training.")
    runs_root: str = _f("runs", "Where run directories are created.")
    run_name: str | None = _f(None, "Run directory name (None: <mode>-<task>-<timestamp>).")
    checkpoint_every: int = _f(1, "Save adapter + optimizer state every N RL steps (resume loses nothing after it).")
    save_rollouts: int = _f(8, "Trajectories per step written to rollouts/ for the browsers.")
    report_to: str = _f("none", "Passed to TRL: none | trackio | wandb | mlflow (JSONL is always written).")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: '{self.mode}' is not one of {list(MODES)}")
        for name in ("cycles", "steps_per_cycle", "population_size", "num_generations", "prompts_per_step",
                     "fast_train_size", "fast_val_size", "eval_size", "eval_k", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "cycles" else 1):
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        if self.num_generations % self.population_size:
            raise ConfigError(f"population_size (K={self.population_size}) must divide num_generations "
                              f"(G={self.num_generations}): each problem's G rollouts are split G/K per harness")
        from fst_lab.tasks.base import task_names

        known = task_names()
        for i, st in enumerate(self.stage_list()):
            where = f"stages[{i}]" if self.stages else "task"
            if st.task not in known:
                raise ConfigError(f"{where}: unknown task '{st.task}' (available: {known})")
            if st.steps is not None and (not isinstance(st.steps, int) or isinstance(st.steps, bool)):
                raise ConfigError(f"{where}.steps: expected an integer, got {st.steps!r}")
            if not isinstance(st.level, int) or isinstance(st.level, bool):
                raise ConfigError(f"{where}.level: expected an integer, got {st.level!r}")
            if self.stages and (st.steps is None or st.steps < 1) and i < len(self.stages) - 1:
                raise ConfigError(f"{where}.steps: every stage but the last needs a positive step count")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"max_new_tokens: must be a positive integer or null, got {self.max_new_tokens!r}")
        for key in ("fast", "slow"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key}: must be a mapping of overrides")
        self.cycle_plan()  # parses the schedule

    def stage_list(self) -> list[Stage]:
        if not self.stages:
            return [Stage(task=self.task, level=self.level, steps=None, harness=self.harness,
                          task_kwargs=dict(self.task_kwargs))]
        out = []
        for i, s in enumerate(self.stages):
            if isinstance(s, Stage):
                out.append(s)
                continue
            if not isinstance(s, dict):
                raise ConfigError(f"stages[{i}]: must be a mapping like {{task: hover, steps: 200}}, got {s!r}")
            unknown = set(s) - {f.name for f in fields(Stage)}
            if unknown:
                raise ConfigError(f"stages[{i}]: unknown keys {sorted(unknown)}")
            out.append(Stage(**s))
        return out

    def cycle_plan(self) -> list[str]:
        """The schedule of one cycle as a list of 'p' / 'w' steps."""
        sched = self.schedule
        if sched is None:
            sched = {"fst": f"p -> w*{self.steps_per_cycle}", "rl": f"w*{self.steps_per_cycle}", "gepa": "p"}[self.mode]
        plan: list[str] = []
        for tok in [t.strip() for t in sched.split("->")]:
            m = re.fullmatch(r"([pw])(?:\s*\*\s*(\d+))?", tok)
            if not m:
                raise ConfigError(f"schedule: cannot parse '{tok}' in '{sched}' (use p, w, w*6 joined by '->')")
            plan += [m.group(1)] * int(m.group(2) or 1)
        if self.mode == "rl" and "p" in plan:
            raise ConfigError("schedule: mode 'rl' keeps the seed harness fixed; remove 'p' steps")
        if self.mode == "gepa" and "w" in plan:
            raise ConfigError("schedule: mode 'gepa' freezes the weights; remove 'w' steps")
        return plan

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) if isinstance(s, Stage) else dict(s) for s in self.stages]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None) -> "FSTConfig":
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}config must be a mapping, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where}unknown config keys {unknown}")
        for k, v in d.items():
            f = known[k]
            if f.type in ("int", "int | None") and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"{where}{k}: expected an integer, got {v!r}")
            if f.type in ("str", "str | None") and v is not None and not isinstance(v, str):
                raise ConfigError(f"{where}{k}: expected a string, got {v!r}")
            if f.type in ("bool",) and not isinstance(v, bool):
                raise ConfigError(f"{where}{k}: expected true/false, got {v!r}")
            if f.type in ("list",) and not isinstance(v, list):
                raise ConfigError(f"{where}{k}: expected a list, got {v!r}")
            if f.type in ("dict",) and not isinstance(v, dict):
                raise ConfigError(f"{where}{k}: expected a mapping, got {v!r}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
        except TypeError as e:
            raise ConfigError(f"{where}{e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "FSTConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            d = yaml.safe_load(text) or {}
        except yaml.MarkedYAMLError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else "?"
            raise ConfigError(f"{p}:{line}: invalid YAML: {e.problem}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        return cls.from_dict(d, source=str(p))

    def replace(self, **kw) -> "FSTConfig":
        d = self.to_dict()
        d.update(kw)
        return FSTConfig.from_dict(d)


def help_table() -> str:
    """Markdown table of every field with its default and help (for docs/CONFIG.md)."""
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in fields(FSTConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | `{default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows)
