"""One documented config for a whole FST run (YAML file <-> dataclass), baselines one flag away.

    mode: fst            # fst | rl (fixed seed harness) | gepa (frozen weights)
    task: math
    cycles: 2
    steps_per_cycle: 6   # T (paper App. D)
    population_size: 4   # K (paper App. D)
    num_generations: 8   # G (paper App. D); K must divide G
    schedule: "p -> w*6" # optional: per-cycle recipe, DSPy-BetterTogether style
    fast: {budget_passes: 3}        # FastConfig: the GEPA round
    slow: {learning_rate: 1.0e-4}   # SlowConfig: the RL step

Schedules: a cycle is a sequence of ``p`` (a fast/prompt step: one GEPA round), ``w`` (a slow/weights
step: one RL optimizer step) and ``c`` (a consolidation step), joined by ``->``; ``w*6`` repeats.
Defaults per mode: fst ``p -> w*T``, rl ``w*T``, gepa ``p`` (gepa freezes the weights: no ``w``, no ``c``).

Stated once: K (``population_size``), G (``num_generations``), ``seed``, ``max_new_tokens``,
``prompts_per_step`` and ``report_to`` live at the top level and flow into both ``fast`` and ``slow``;
repeating one there with another value is refused. ``FSTConfig.fast`` / ``.slow`` are the typed
:class:`FastConfig` / :class:`SlowConfig` the loops run with.

Every mistake is refused before anything is written, as a :class:`ConfigError` naming file, line and
field: ``c.yaml:9: fast.budget_pases: unknown key; did you mean budget_passes?``.

Continual learning: ``stages`` is a list of ``{task, level, steps}``; the run switches task after each
stage's RL steps (paper: HoVer -> CodeIO -> Physics every 200 steps, task-agnostic seed harness).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fst_lab import yamltext
from fst_lab.errors import ConfigError
from fst_lab.loop_configs import (CANDIDATE_SELECTIONS, CONSOLIDATE_KL_SUPPORTS, CONSOLIDATE_METHODS,
                                  CONSOLIDATE_STUDENTS, CONSOLIDATE_TEACHERS, LOSS_TYPES, VLLM_MODES,
                                  ConsolidateConfig, FastConfig, SlowConfig, _f)

__all__ = ["FSTConfig", "Stage", "ConfigError", "FastConfig", "SlowConfig", "ConsolidateConfig", "MODES",
           "CANDIDATE_SELECTIONS", "LOSS_TYPES", "VLLM_MODES", "CONSOLIDATE_METHODS", "CONSOLIDATE_STUDENTS",
           "CONSOLIDATE_TEACHERS", "CONSOLIDATE_KL_SUPPORTS", "help_table", "field_lines"]

MODES = ("fst", "rl", "gepa")

# Settings stated once, at the top level of FSTConfig, and the field each one fills in a loop config.
FAST_SHARED = {"population_size": "population_size", "seed": "seed", "max_new_tokens": "max_new_tokens"}
SLOW_SHARED = {"population_size": "population_size", "num_generations": "num_generations", "seed": "seed",
               "prompts_per_step": "prompts_per_step", "report_to": "report_to",
               "max_completion_length": "max_new_tokens"}
CONSOLIDATE_SHARED = {"seed": "seed", "max_new_tokens": "max_new_tokens"}
LOOPS = {"fast": (FastConfig, FAST_SHARED), "slow": (SlowConfig, SLOW_SHARED),
         "consolidate": (ConsolidateConfig, CONSOLIDATE_SHARED)}
_SHARED_NOTE = ("K, G, seed, max_new_tokens, prompts_per_step and report_to are stated once, at the top level, "
                "and flow into the loops that use them")

_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "list": "a list", "list[str]": "a list of strings", "dict": "a mapping", "None": "null"}
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _checked(path: str, value: Any, annotation: str) -> Any:
    """``value`` if it fits the field's annotation (a string such as ``"int | None"``), else ConfigError.

    Numbers written as YAML 1.1 can't read them (``1e-4`` is a string to PyYAML) become floats."""
    alts = [a.strip() for a in str(annotation).split("|")]
    for a in alts:
        if a == "None" and value is None:
            return value
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if a == "str" and isinstance(value, str):
            return value
        if a == "bool" and isinstance(value, bool):
            return value
        if a in ("list", "list[str]") and isinstance(value, list):
            if a == "list" or all(isinstance(x, str) for x in value):
                return value
        if a == "dict" and isinstance(value, dict):
            return value
    if "float" in alts and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if not any(a in _EXPECTED for a in alts):  # a type this checker does not know: leave it to the class
        return value
    expected = " or ".join(_EXPECTED.get(a, a) for a in alts)
    raise ConfigError(f"expected {expected}, got {_short(value)}", path=path)


# Names people write for fields that difflib would not match (the paper's letters, common abbreviations).
_ALIASES = {"K": "population_size", "G": "num_generations", "T": "steps_per_cycle", "lr": "learning_rate",
            "kl_coef": "beta", "max_tokens": "max_new_tokens", "steps": "steps_per_cycle"}


def _yamlish(v: Any) -> str:
    return "null" if v is None else "true" if v is True else "false" if v is False else _short(v)


def _key_name(k: Any) -> str:
    return k if isinstance(k, str) and k.isidentifier() else repr(k)


def _refuse_unknown(prefix: str, keys, known: list[str], elsewhere: dict[str, str] | None = None) -> None:
    """ConfigError for the first key not in ``known``, with the closest known name as a hint."""
    for k in keys:
        if k in known:
            continue
        path = f"{prefix}{_key_name(k)}"
        home = (elsewhere or {}).get(k) if isinstance(k, str) else None
        if home:
            raise ConfigError(f"unknown key here; it belongs {home}", path=path)
        alias = _ALIASES.get(str(k))
        close = [alias] if alias in known else difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f" (known keys: {', '.join(known)})"
        raise ConfigError(f"unknown key{hint}", path=path)


def _homes(exclude: str = "") -> dict[str, str]:
    """Where a loop setting belongs, for keys written in the wrong section: ``{"beta": "under slow:"}``."""
    found: dict[str, list[str]] = {}
    for section, (cls, _) in LOOPS.items():
        if section != exclude:
            for f in fields(cls):
                found.setdefault(f.name, []).append(section)
    return {n: "under " + " or ".join(f"{s}:" for s in secs) for n, secs in found.items()}


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


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
    *data* (examples per cycle, eval), *fast loop* (``fast``: a :class:`FastConfig`), *slow loop*
    (``slow``: a :class:`SlowConfig`), *bookkeeping* (seed, runs_root, checkpoints, tracking).

    ``fast`` and ``slow`` may be given as mappings (as in YAML) or as the typed configs; either way they
    hold the typed configs after construction, with K, G, seed, max_new_tokens, prompts_per_step and
    report_to filled in from the top level::

        >>> c = FSTConfig(population_size=2, num_generations=4, seed=3, fast={"budget_passes": 2})
        >>> (c.fast.population_size, c.fast.seed, c.slow.num_generations, c.fast.budget_passes)
        (2, 3, 4, 2)
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
    population_size: int = _f(4, "K: harnesses in the population (paper App. D: K=4). Flows into fast and slow.")
    num_generations: int = _f(8, "G: rollouts per problem, split G/K per harness (paper App. D: G=8). Flows "
                                 "into slow.")
    schedule: str | None = _f(None, "Per-cycle recipe of p (GEPA round), w (RL step) and c (consolidation step), "
                                    "e.g. 'p -> w*6'. None: the mode's default.")
    # data
    prompts_per_step: int = _f(2, "Problems per RL step (ours: CPU scale; paper uses far larger batches). Flows "
                                  "into slow.")
    fast_train_size: int = _f(8, "Examples GEPA reflects on per round (ours: CPU scale).")
    fast_val_size: int = _f(8, "Examples GEPA selects the Pareto front on per round (ours: CPU scale).")
    eval_size: int = _f(16, "Validation examples for `evaluate()`.")
    eval_k: int = _f(1, "Samples per validation example for mean@k.")
    eval_every_cycle: bool = _f(True, "Evaluate on validation at the end of each cycle.")
    max_new_tokens: int | None = _f(None, "Override the harness's max_new_tokens for all rollouts (None: harness). "
                                          "Flows into fast.max_new_tokens, slow.max_completion_length and "
                                          "consolidate.max_new_tokens.")
    # loops
    fast: FastConfig = field(default_factory=dict, metadata={"help": (
        "The fast loop (FastConfig): budget_passes, reflection_lm, ... Written as a mapping in YAML.")})
    slow: SlowConfig = field(default_factory=dict, metadata={"help": (
        "The slow loop (SlowConfig): loss_type, beta, learning_rate, ... Written as a mapping in YAML.")})
    consolidate: ConsolidateConfig = field(default_factory=dict, metadata={"help": (
        "Consolidation steps (ConsolidateConfig; schedule token c, `fst-lab consolidate`): method, student, "
        "teacher, steps, ... Written as a mapping in YAML.")})
    # bookkeeping
    seed: int = _f(0, "Seed for data, sampling and training. Flows into fast, slow and consolidate.")
    runs_root: str = _f("runs", "Where run directories are created.")
    run_name: str | None = _f(None, "Run directory name (None: <mode>-<task>-<timestamp>).")
    checkpoint_every: int = _f(1, "Save adapter + optimizer state every N RL steps (resume loses nothing after it).")
    save_rollouts: int = _f(8, "Trajectories per step written to rollouts/ for the browsers.")
    report_to: str | list[str] = _f("none", "Passed to TRL: none | trackio | wandb | mlflow, or a list of them (JSONL "
                                            "is always written). Flows into slow.")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field and (re)build the typed ``fast``/``slow`` configs; ConfigError on the first
        problem, naming its field."""
        for f in fields(self):
            if f.name not in LOOPS:
                setattr(self, f.name, _checked(f.name, getattr(self, f.name), f.type))
        if self.mode not in MODES:
            raise ConfigError(f"'{self.mode}' is not one of {list(MODES)}", path="mode")
        for name in ("cycles", "steps_per_cycle", "population_size", "num_generations", "prompts_per_step",
                     "fast_train_size", "fast_val_size", "eval_size", "eval_k", "checkpoint_every",
                     "save_rollouts"):
            v = getattr(self, name)
            if v < (0 if name in ("cycles", "save_rollouts") else 1):
                raise ConfigError(f"must be a positive integer, got {v!r}", path=name)
        if self.num_generations % self.population_size:
            raise ConfigError(f"K={self.population_size} must divide num_generations G={self.num_generations}: "
                              "each problem's G rollouts are split G/K per harness", path="population_size")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"must be a positive integer or null, got {self.max_new_tokens!r}",
                              path="max_new_tokens")
        from fst_lab.tasks import base as task_base

        known = task_base.task_names()
        for i, st in enumerate(self.stage_list()):
            where = f"stages[{i}]" if self.stages else "task"
            if st.task not in known:
                raise ConfigError(f"unknown task '{st.task}' (available: {known})",
                                  path=f"{where}.task" if self.stages else "task")
            levels = getattr(task_base._REGISTRY.get(st.task), "levels", None)  # generated tasks have levels
            if levels and st.level not in levels:
                raise ConfigError(f"task '{st.task}' has levels {list(levels)}, not {st.level!r}",
                                  path=f"{where}.level" if self.stages else "level")
            if self.stages and (st.steps is None or st.steps < 1) and i < len(self.stages) - 1:
                raise ConfigError("every stage but the last needs a positive step count", path=f"{where}.steps")
        for key, (cls, shared) in LOOPS.items():
            setattr(self, key, self._loop(key, cls, getattr(self, key), shared))
        self.cycle_plan()  # parses the schedule

    def _loop(self, key: str, cls: type, value: Any, shared: dict[str, str]):
        """The typed loop config for ``fast``/``slow``: its own settings plus the shared top-level ones."""
        names = [f.name for f in fields(cls)]
        types = {f.name: f.type for f in fields(cls)}
        synced = self.__dict__.setdefault("_synced", {}).get(key, {})
        if isinstance(value, cls):
            # A typed config from Python: its shared fields count as stated only when they were set
            # explicitly, i.e. differ from the class default and from what this config filled in before.
            over = {}
            for f in fields(cls):
                v = getattr(value, f.name)
                if f.name in shared and (v == _default(f) or (f.name in synced and v == synced[f.name])):
                    continue
                over[f.name] = copy.deepcopy(v)
        elif isinstance(value, dict):
            other = _homes(exclude=key)
            other.update({f.name: "at the top level" for f in fields(FSTConfig) if f.name not in names})
            _refuse_unknown(f"{key}.", value, names, other)
            over = dict(value)
        else:
            raise ConfigError(f"expected a mapping of {cls.__name__} settings, got {_short(value)}", path=key)
        for name in list(over):
            over[name] = _checked(f"{key}.{name}", over[name], types[name])
        tops = {name: getattr(self, top) for name, top in shared.items()}
        for name, top in shared.items():
            if name in over and over[name] != tops[name]:
                raise ConfigError(f"{_yamlish(over[name])} conflicts with {top}: {_yamlish(tops[name])} at the "
                                  f"top level; {_SHARED_NOTE}", path=f"{key}.{name}")
        try:
            obj = cls(**{**over, **tops})
        except ConfigError as e:
            if e.path and e.path.split(".")[-1] in shared:  # a shared field: it was stated at the top level
                raise ConfigError(e.message, path=shared[e.path.split(".")[-1]]) from None
            raise
        except (ValueError, TypeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            m = re.match(r"(\w+)", msg)
            field_name = m.group(1) if m and m.group(1) in names else None
            if field_name in shared:  # stated at the top level: point there
                path = shared[field_name]
            else:
                path = f"{key}.{field_name}" if field_name else key
            if field_name:  # "loss_type must be ..." -> "slow.loss_type: must be ..."
                msg = re.sub(rf"^{field_name}\s*(?:\((\w+)\)\s*)?(?=must\b)", lambda m: f"{m.group(1) or ''} ",
                             msg).strip()
            raise ConfigError(msg, path=path) from None
        self._synced[key] = tops
        return obj

    def stage_list(self) -> list[Stage]:
        if not self.stages:
            return [Stage(task=self.task, level=self.level, steps=None, harness=self.harness,
                          task_kwargs=dict(self.task_kwargs))]
        out = []
        names = [f.name for f in fields(Stage)]
        types = {f.name: f.type for f in fields(Stage)}
        for i, s in enumerate(self.stages):
            if isinstance(s, Stage):
                s = dataclasses.asdict(s)
            if not isinstance(s, dict):
                raise ConfigError(f"must be a mapping like {{task: hover, steps: 200}}, got {_short(s)}",
                                  path=f"stages[{i}]")
            _refuse_unknown(f"stages[{i}].", s, names)
            out.append(Stage(**{k: _checked(f"stages[{i}].{k}", v, types[k]) for k, v in s.items()}))
        return out

    def cycle_plan(self) -> list[str]:
        """The schedule of one cycle as a list of 'p' (fast), 'w' (slow) and 'c' (consolidation) steps."""
        sched = self.schedule
        if sched is None:
            sched = {"fst": f"p -> w*{self.steps_per_cycle}", "rl": f"w*{self.steps_per_cycle}", "gepa": "p"}[self.mode]
        plan: list[str] = []
        for tok in [t.strip() for t in sched.split("->")]:
            m = re.fullmatch(r"([pwc])(?:\s*\*\s*(\d+))?", tok)
            if not m:
                raise ConfigError(f"cannot parse '{tok}' in '{sched}' (use p, w, c, w*6 joined by '->')",
                                  path="schedule")
            plan += [m.group(1)] * int(m.group(2) or 1)
        if not plan:
            raise ConfigError(f"'{sched}' has no steps (w*0 repeats nothing)", path="schedule")
        if self.mode == "rl" and "p" in plan:
            raise ConfigError("mode 'rl' keeps the seed harness fixed; remove 'p' steps", path="schedule")
        if self.mode == "rl" and "c" in plan:
            # nothing evolves in mode rl, so a consolidation step would always fail at run time
            raise ConfigError("mode 'rl' evolves no harness to consolidate; remove 'c' steps", path="schedule")
        if self.mode == "gepa" and ("w" in plan or "c" in plan):
            raise ConfigError("mode 'gepa' freezes the weights; remove 'w' and 'c' steps", path="schedule")
        return plan

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        """The YAML shape: plain values, ``fast``/``slow`` as mappings without the shared settings."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in LOOPS:
                shared = LOOPS[f.name][1]
                v = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else dict(v)
                v = {k: x for k, x in v.items() if k not in shared}
            elif f.name == "stages":
                v = [dataclasses.asdict(s) if isinstance(s, Stage) else copy.deepcopy(s) for s in v]
            d[f.name] = copy.deepcopy(v)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None, lines: dict[str, int] | None = None) -> "FSTConfig":
        """Build from a mapping (a parsed YAML file). ``source``/``lines`` place errors in that file."""
        try:
            if not isinstance(d, dict):
                raise ConfigError(f"config must be a mapping, got {type(d).__name__}")
            _refuse_unknown("", d, [f.name for f in fields(cls)], _homes())
            return cls(**copy.deepcopy(d))
        except ConfigError as e:
            raise e.located(source, lines) from None

    @classmethod
    def load(cls, path: str | Path) -> "FSTConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", source=str(p)) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, not a config file", source=str(p)) from None
        except PermissionError:
            raise ConfigError("permission denied", source=str(p)) from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(p)) from None
        try:
            d = yamltext.safe_load(text) or {}
            lines = _yaml_lines(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            raise ConfigError(f"invalid YAML: {e.problem or e.context}", source=str(p),
                              line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              source=str(p)) from None
        return cls.from_dict(d, source=str(p), lines=lines)

    def replace(self, **kw) -> "FSTConfig":
        d = self.to_dict()
        d.update(kw)
        return FSTConfig.from_dict(d)


def demo_config(task: str = "math", *, seed: int = 0, runs_root: str = "runs", run_name: str | None = None,
                fast: dict | None = None, slow: dict | None = None, **kw) -> FSTConfig:
    """The configuration of ``fst-lab demo`` (also the CPU benchmarks' "demo schedule"): 2 cycles of a GEPA
    round (3 passes) then 2 RL steps of 2 problems x G = 4 on K = 2 harnesses, 64 new tokens, 16 val problems.
    ``fast``/``slow`` entries and top-level keywords override the demo's."""
    import time

    return FSTConfig.from_dict({**dict(
        mode="fst", task=task, level=1, cycles=2, steps_per_cycle=2, population_size=2, num_generations=4,
        prompts_per_step=2, fast_train_size=4, fast_val_size=4, eval_size=16, max_new_tokens=64, seed=seed,
        # 3 passes = room for two proposals (one reflective, one bootstrapped: bootstrap_every=2).
        fast={"budget_passes": 3, "reflection_max_tokens": 192, **(fast or {})},
        # 4 RL steps only: the paper's 10 warm-up steps would keep the rate near 0 for the whole demo,
        # and LoRA needs a higher rate than full fine-tuning to move at all in 4 steps.
        slow={"learning_rate": 1e-4, "warmup_steps": 0, **(slow or {})}, runs_root=runs_root,
        run_name=run_name or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"), **kw})


def field_lines(path: str | Path | None) -> dict[str, int]:
    """Line of every field in a config file (``{}`` if it can't be read): lets later errors about a
    field (a missing model, a harness) point at the line that set it, via :meth:`ConfigError.located`."""
    try:
        return _yaml_lines(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def _yaml_lines(text: str) -> dict[str, int]:
    """1-based line of every field path in a YAML document (``fast.budget_passes``, ``stages[1].task``)."""
    out: dict[str, int] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = f"{path}.{k.value}" if path else str(k.value)
                out.setdefault(name, k.start_mark.line + 1)
                walk(v, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                name = f"{path}[{i}]"
                out.setdefault(name, v.start_mark.line + 1)
                walk(v, name)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return out


def help_table(cls: type = None) -> str:
    """Markdown table of every field of ``cls`` (default: FSTConfig) with its default and help (docs/CONFIG.md).
    Fields that FSTConfig states once at its top level are marked in the loop configs' tables."""
    cls = cls or FSTConfig
    shared = next((sh for key, (c, sh) in LOOPS.items() if c is cls), {})
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in fields(cls):
        if f.name in shared:
            default, note = f"top level `{shared[f.name]}`", " *(Set at the top level only.)*"
        else:
            v = _default(f)
            default, note = ("`{...}`" if f.name in LOOPS and cls is FSTConfig else f"`{v!r}`"), ""
        text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
        rows.append(f"| `{f.name}` | {default} | {text}{note} |")
    return "\n".join(rows)


def config_doc() -> str:
    """The text of docs/CONFIG.md (``python -c "from fst_lab.config import config_doc; print(config_doc())"``)."""
    parts = [_DOC_HEAD]
    for key, title in (("", "Top level (`FSTConfig`)"), ("fast", "`fast:` — the fast loop (`FastConfig`)"),
                       ("slow", "`slow:` — the slow loop (`SlowConfig`)"),
                       ("consolidate", "`consolidate:` — consolidation steps (`ConsolidateConfig`)")):
        cls = LOOPS[key][0] if key else FSTConfig
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        parts.append(f"## {title}\n\n{doc}\n\n{help_table(cls)}\n")
    return "\n".join(parts)


_DOC_HEAD = """# Run config

One YAML file describes a run (`fst-lab run CONFIG.yaml`, `Session("CONFIG.yaml")`); every key is
optional and defaults follow the paper (App. D) where it has one. This file is generated from the
dataclasses' help texts: `python -c "from fst_lab.config import config_doc; print(config_doc())" > docs/CONFIG.md`.

```yaml
mode: fst              # fst | rl (fixed seed harness) | gepa (frozen weights)
task: math
cycles: 2
population_size: 4     # K: stated once here, used by fast and slow
num_generations: 8     # G: K must divide G
seed: 0                # one seed for data, GEPA, RL and consolidation
schedule: "p -> w*6"   # p = GEPA round, w = RL step, c = consolidation step
fast:
  budget_passes: 3
slow:
  learning_rate: 1.0e-4   # write 1.0e-4 or 0.0001 (YAML 1.1 reads 1e-4 as text; the config accepts both)
consolidate:
  method: kl
```

**Stated once.** `population_size` (K), `num_generations` (G), `seed`, `max_new_tokens`,
`prompts_per_step` and `report_to` live at the top level and flow into `fast`, `slow` (and `seed` /
`max_new_tokens` into `consolidate`); `slow.max_completion_length` is `max_new_tokens`. Repeating one
inside a section with another value is refused. `config.fast`, `config.slow` and `config.consolidate` are
the typed configs the loops run with.

**Checked before anything is written.** Unknown keys (with the closest name), wrong types, values out
of range, K not dividing G, unknown tasks and levels, schedules the mode can't run: each is a
`ConfigError` naming file, line and field, e.g.
`c.yaml:9: fast.budget_pases: unknown key; did you mean budget_passes?` — and no run directory is
created. `fst-lab run --dry-run CONFIG` prints what a valid config would do (see docs/ERRORS.md for the
command line's errors).
"""
