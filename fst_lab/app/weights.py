"""The arena's weights: the base policy per model name, and a run's trained and consolidated weights (base +
the safetensors adapter or weights of its latest checkpoint; nothing pickled is ever read).

    >>> cache = PolicyCache()
    >>> policy, notice = cache.for_run(run, "consolidated")     # base | trained | consolidated

After ``consolidate`` steps, a run's latest checkpoint holds the consolidated weights, and its ``consolidate/``
folder the trained weights from before the consolidation phase (the teacher snapshot): "trained" reads
those, "consolidated" the checkpoint itself. A run with no consolidation since its last RL step has only
trained weights ("consolidated" then says so and shows them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from fst_lab.runs import RunView, consolidation_steps

log = logging.getLogger(__name__)


WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")


def default_weights(run: RunView | None) -> str:
    """The weights the arena shows when a run is picked: the ones its harnesses last evolved with.
    "consolidated" after consolidation steps, "trained" once an RL step is checkpointed with weights,
    else "base" (no run, a GEPA-only run, a run with no RL step yet)."""
    ck = run.latest_checkpoint() if run is not None else None
    if ck is None or not any((ck / f).exists() for f in WEIGHT_FILES):
        return "base"
    if consolidation_steps(ck):
        return "consolidated"
    counters = (run.state or {}).get("counters", {})
    return "trained" if counters.get("rl_step", 0) or counters.get("consolidate_step", 0) else "base"


class PolicyCache:
    """The base policy per model name (built once by ``policy_factory``), and a run's trained weights.

    Trained weights are the base model + the safetensors weights of the run's latest checkpoint:
    a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``, loaded with
    ``PeftModel.from_pretrained``) or full weights (``model.safetensors``). Nothing else in the
    checkpoint (optimizer/RNG pickles) is ever read.
    """

    def __init__(self, policy_factory: Callable[[str], Any] | None = None):
        self.factory = policy_factory or _default_factory
        self._base: dict[str, Any] = {}
        self._trained: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def base(self, model: str | None = None):
        model = model or "smollm2-135m"
        with self._lock:
            if model not in self._base:
                self._base[model] = self.factory(model)
            return self._base[model]

    def for_run(self, run: RunView | None, weights: str = "base") -> tuple[Any, str]:
        """(policy, notice). ``weights``: base | trained | consolidated. Missing/unloadable weights fall back
        (consolidated -> trained -> base) with a notice that says so."""
        model = (run.config or {}).get("model") if run is not None else None
        if weights not in ("trained", "consolidated"):
            return self.base(model), f"weights: base (`{model or 'smollm2-135m'}`)"
        if run is None:
            return self.base(model), f"⚠️ no run selected: {weights} weights need a run, using the base weights"
        ck = run.latest_checkpoint()
        if ck is None:
            return self.base(model), f"⚠️ run '{run.name}' has no checkpoint yet: using the base weights"
        steps = consolidation_steps(ck)
        where = f"`{run.name}/checkpoints/{ck.name}`"
        if weights == "consolidated" and not steps:
            kind, warn = "trained", (f"⚠️ run '{run.name}' has no consolidation steps since its last RL step: "
                                     "showing its trained weights · ")
        else:
            kind, warn = weights, ""
        # trained weights of a consolidated checkpoint = its teacher snapshot (the weights before consolidating)
        source = "teacher" if kind == "trained" and steps else "checkpoint"
        label = {("trained", "checkpoint"): f"weights: trained ({where})",
                 ("trained", "teacher"): f"weights: trained, before consolidation ({where}/consolidate/teacher)",
                 ("consolidated", "checkpoint"): f"weights: consolidated ({where}, {steps} consolidation steps)"}
        notice = warn + label[(kind, source)]
        key = (str(run.path), ck.name, _mtime(ck), source)
        with self._lock:
            if key in self._trained:
                return self._trained[key], notice
        try:
            pol = self._load_trained(model, ck)
            if source == "teacher":
                from fst_lab.consolidate import load_teacher_snapshot

                load_teacher_snapshot(pol.model, ck)
        except Exception as e:  # a broken or foreign checkpoint must not take the arena down
            log.warning("could not load %s weights from %s: %s", kind, ck, e)
            return self.base(model), (f"⚠️ could not load {kind} weights from `{ck.name}` ({e}): "
                                      "using the base weights")
        with self._lock:  # one checkpoint per run (both sources of it)
            self._trained = {k: v for k, v in self._trained.items() if k[0] != key[0] or k[1:3] == key[1:3]}
            self._trained[key] = pol
        return pol, notice

    def _load_trained(self, model: str | None, ck: Path):
        adapter_cfg, adapter = ck / "adapter_config.json", ck / WEIGHT_FILES[0]
        full = ck / WEIGHT_FILES[1]
        fresh = self.factory(model or "smollm2-135m")  # an independent base: PEFT injects layers in place
        if adapter_cfg.exists() and adapter.exists():
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(fresh.model, str(ck), is_trainable=False)
            peft_model.eval()
            return dataclasses.replace(fresh, model=peft_model, name=f"{fresh.name}+{ck.name}")
        if full.exists():
            from safetensors.torch import load_file

            missing, unexpected = fresh.model.load_state_dict(load_file(str(full)), strict=False)
            missing = [k for k in missing if "lm_head" not in k]
            if missing or unexpected:
                raise ValueError(f"weights don't match the base model (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
            fresh.model.eval()
            return dataclasses.replace(fresh, name=f"{fresh.name}+{ck.name}")
        raise FileNotFoundError("no adapter_model.safetensors or model.safetensors in the checkpoint")


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _default_factory(model: str):
    from fst_lab.models import load_policy

    return load_policy(model)
