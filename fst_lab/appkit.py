"""The Gradio app's logic as plain functions and small classes, so ``app.py`` stays a layout file.

What lives here, in the order the app uses it:

- **safety**: :func:`redact` (api_key-like fields never reach the screen), :class:`Catalog` (runs are
  opened only inside the runs root, through :mod:`fst_lab.runs`' pure loaders; harness files only by
  name from the harness dir);
- **views**: :func:`lineage_tree`, :func:`diff_html`, :func:`curve_figures`, :func:`run_summary`;
- **weights**: :class:`PolicyCache` (the base policy, cached; a run's trained weights = base +
  its latest checkpoint's safetensors adapter via PEFT, or a notice and the base when there is none);
- **arena**: :func:`stream_arena` runs both harnesses through :func:`fst_lab.rollout.rollout_pairs`
  (the very code training uses, tools executed) and yields the two chats token by token;
- **steering**: :class:`Steering` drives one live :class:`fst_lab.session.Session` (the Run tab).

Nothing here is Gradio-specific except the chat-message dicts (``{"role", "content", "metadata"}``),
so every function can be called and tested without a browser.

    >>> cat = Catalog("runs")
    >>> run = cat.open_run("demo-20261122")        # RunDirError for '../../etc'
    >>> print(lineage_tree(run.lineage_edges()))
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from fst_lab.harness import Harness, HarnessError, default_harness_dir
from fst_lab.runs import RunDirError, RunView, list_runs, load_run, running_max, safe_run_path

log = logging.getLogger(__name__)

ARENA_EXAMPLES = 20  # validation examples offered in the arena's dropdown
FREE_TEXT = ""  # the example dropdown's value for "type your own input"
ORIGIN_MARK = {"seed": "🌱 seed", "gepa": "🧬 gepa", "bootstrap": "🥾 bootstrap", "manual": "✍️ manual",
               "merge": "🔀 merge"}

# ============================================================================ safety
_SECRET_KEY_RE = re.compile(r"(api[_-]?key|secret|token|passw|credential|authorization|bearer|private[_-]?key)", re.I)
# ...but not fields that *name* where a secret lives (api_key_env: OPENAI_API_KEY) or count tokens
_NOT_SECRET = re.compile(r"(_env|_env_var|_var|_name|_file|_path|_tokens)$", re.I)


class _SecretKey:
    """Field names that hold secrets (``api_key``, ``token``...), not ones that *name* where a secret is."""

    @staticmethod
    def search(key: str) -> bool:
        return bool(_SECRET_KEY_RE.search(key)) and not _NOT_SECRET.search(key)


_SECRET_KEY = _SecretKey()
_SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|xox[abp]-)[A-Za-z0-9_\-]{8,}")
REDACTED = "***redacted***"


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with api_key-like fields (and key-looking strings) replaced by ``***redacted***``."""
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.match(obj.strip()):
        return REDACTED
    return obj


def secret_fields(obj: Any, path: str = "") -> list[str]:
    """Paths of api_key-like fields that hold a value (the Run tab refuses configs that carry keys)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, ""):
                out.append(p)
            else:
                out += secret_fields(v, p)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += secret_fields(v, f"{path}[{i}]")
    elif isinstance(obj, str) and _SECRET_VALUE.match(obj.strip()):
        out.append(path or "<value>")
    return out


_HARNESS_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Catalog:
    """Where the app may read from: run directories under ``runs_root`` and harness files in ``harness_dir``.

    Every name that comes from the browser or the API goes through here; anything outside the runs root
    (``../../etc``, an absolute path, a symlink out) is refused with a :class:`RunDirError`.
    """

    def __init__(self, runs_root: str | Path = "runs", harness_dir: str | Path | None = None):
        self.runs_root = Path(runs_root).resolve()
        self.harness_dir = Path(harness_dir) if harness_dir else default_harness_dir()
        self._harness_files: dict[str, Harness] | None = None

    # ---------------------------------------------------------------- runs
    def run_names(self) -> list[str]:
        """Run directories under the root (newest first), as paths relative to it."""
        out = []
        for p in list_runs(self.runs_root):
            try:
                out.append(str(p.resolve().relative_to(self.runs_root)))
            except ValueError:  # a symlink pointing out of the root: not offered
                continue
        return out

    def open_run(self, name: str) -> RunView:
        """Load a run by its name under the root (pure loaders; refuses paths outside the root)."""
        name = (name or "").strip()
        if not name:
            raise RunDirError("no run selected")
        path = safe_run_path(name, self.runs_root)
        return load_run(path, root=self.runs_root)

    # ---------------------------------------------------------------- harnesses
    def harness_files(self, refresh: bool = False) -> dict[str, Harness]:
        """Harness files by name (``harnesses/*.yaml``); invalid files are skipped with a log line."""
        if self._harness_files is None or refresh:
            out: dict[str, Harness] = {}
            for p in sorted(self.harness_dir.glob("*.yaml")):
                try:
                    out[p.stem] = Harness.load(p)
                except HarnessError as e:
                    log.warning("skipping harness file %s: %s", p, e)
            self._harness_files = out
        return self._harness_files

    def harness_choices(self, run: RunView | None = None, cycle: str | int | None = None
                        ) -> tuple[list[tuple[str, str]], str | None, str | None]:
        """(choices as (label, ref), default A, default B). Refs are ``run:<id>`` or ``file:<name>``.

        With a run: its seed harness and the cycle's population (best first), then the harness files.
        Defaults: A = the seed harness, B = the best evolved member. Without a run: two harness files.
        """
        choices: list[tuple[str, str]] = []
        default_a = default_b = None
        if run is not None:
            rec = run.population_record(parse_cycle(cycle))
            scores = rec.get("scores", {}) or {}
            members = [m["id"] for m in rec.get("members", [])]
            seed = run.seed_harness()
            ids = ([seed.id] if seed is not None and seed.id not in members else []) + \
                sorted(members, key=lambda i: -(scores.get(i) if scores.get(i) is not None else -1.0))
            for hid in ids:
                try:
                    h = run.harness(hid)
                except (RunDirError, HarnessError):
                    continue
                sc = scores.get(hid)
                label = f"{ORIGIN_MARK.get(h.lineage.origin, h.lineage.origin)} · {h.name}@{hid}" + \
                    (f" · score {sc:.3f}" if isinstance(sc, (int, float)) else "") + \
                    (" · in population" if hid in members else "")
                choices.append((label, f"run:{hid}"))
            if seed is not None:
                default_a = f"run:{seed.id}"
            best = run.best_harness(parse_cycle(cycle)) if members else None
            evolved = [i for i in ids if i in members and run.harness(i).lineage.origin != "seed"]
            if evolved:
                default_b = f"run:{evolved[0]}"
            elif best is not None:
                default_b = f"run:{best.id}"
            default_a = default_a or default_b
            default_b = default_b or default_a
        files = self.harness_files()
        for name, h in files.items():
            choices.append((f"📄 {name}.yaml", f"file:{name}"))
        if default_a is None and files:
            names = list(files)
            default_a = f"file:{names[0]}"
            default_b = f"file:{names[1] if len(names) > 1 else names[0]}"
        return choices, default_a, default_b

    def resolve_harness(self, ref: str, run: RunView | None = None) -> Harness:
        """A harness from a ``run:<id>`` / ``file:<name>`` ref (ids and names are validated, never joined raw)."""
        ref = (ref or "").strip()
        kind, _, key = ref.partition(":")
        if kind == "run":
            if run is None:
                raise RunDirError(f"harness '{ref}' belongs to a run, but no run is selected")
            if not _HARNESS_ID.match(key):
                raise RunDirError(f"refused: '{key}' is not a harness id")
            return run.harness(key)
        if kind == "file":
            files = self.harness_files()
            if key not in files:
                raise HarnessError(f"no harness file named '{key}' in {self.harness_dir} (have {sorted(files)})")
            return files[key]
        raise HarnessError(f"pick a harness (got {ref!r})")


def parse_cycle(cycle: str | int | None) -> int | None:
    """'latest' / '' / None -> None (the live population); '3' -> 3."""
    if cycle in (None, "", "latest"):
        return None
    try:
        return int(cycle)
    except (TypeError, ValueError):
        raise RunDirError(f"cycle must be 'latest' or a number, got {cycle!r}") from None


def cycle_choices(run: RunView | None) -> list[str]:
    return ["latest"] + [str(c) for c in run.cycles()] if run is not None else ["latest"]


# ============================================================================ tasks & examples
@dataclass(frozen=True)
class TaskSpec:
    name: str
    level: int = 1
    seed: int = 0


def task_spec_for(run: RunView | None, harness: Harness | None = None, default: str = "hover") -> TaskSpec:
    """The task a run trained on (its first stage), else the harness's own task, else ``default``."""
    if run is not None:
        cfg = run.config or {}
        stages = cfg.get("stages") or []
        st = stages[0] if stages and isinstance(stages[0], dict) else {}
        return TaskSpec(str(st.get("task") or cfg.get("task") or default),
                        int(st.get("level") or cfg.get("level") or 1),
                        int(cfg.get("seed") or 0))
    if harness is not None and harness.task:
        return TaskSpec(harness.task)
    return TaskSpec(default)


_TASKS: dict[TaskSpec, Any] = {}
_TASKS_LOCK = threading.Lock()


def get_task_cached(spec: TaskSpec):
    """Built-in tasks only (a task that needs constructor arguments, e.g. a user's jsonl path, is not
    opened by the app: it would read files the run config points at)."""
    from fst_lab.tasks import get_task

    with _TASKS_LOCK:
        if spec not in _TASKS:
            _TASKS[spec] = get_task(spec.name, level=spec.level, seed=spec.seed)
        return _TASKS[spec]


def task_names() -> list[str]:
    from fst_lab.tasks import task_names as names

    return [n for n in names() if n not in ("jsonl", "dataset", "user")]


def example_choices(spec: TaskSpec, n: int = ARENA_EXAMPLES) -> list[tuple[str, str]]:
    """[(label, example id)] of the task's first ``n`` validation examples, after a free-text entry."""
    task = get_task_cached(spec)
    exs = task.examples("val", n)
    out = [("✍️ free text (type below)", FREE_TEXT)]
    for ex in exs:
        first = next(iter(ex.inputs.values()), "")
        first = " ".join(str(first).split())
        out.append((f"{ex.id} · {first[:90]}", ex.id))
    return out


def find_example(spec: TaskSpec, example_id: str, n: int = ARENA_EXAMPLES):
    task = get_task_cached(spec)
    for split in ("val", "test", "train"):
        for ex in task.examples(split, min(n, len(task.examples(split)))):
            if ex.id == example_id:
                return ex
    raise KeyError(f"no example '{example_id}' among the first {n} of task '{spec.name}'")


def free_text_example(harness: Harness, text: str):
    """An unscored example: the text fills the harness's first input (others are left empty)."""
    from fst_lab.tasks.base import Example

    inputs = {name: (text if i == 0 else "") for i, name in enumerate(harness.inputs)}
    return Example(id="free-text", inputs=inputs, answer=None)


class Unscored:
    """A task wrapper for free text: the task's tools still run, but there is nothing to score against."""

    def __init__(self, task):
        self._task = task
        self.name = getattr(task, "name", "free-text")

    def tool_impls(self):
        return self._task.tool_impls() if hasattr(self._task, "tool_impls") else {}

    def score(self, example, trajectory):
        from fst_lab.tasks.base import Score

        return Score(0.0, "free text: no reference answer, so not scored")

    def examples(self, split, n=None):  # pragma: no cover - protocol completeness
        return []


# ============================================================================ views
def run_summary(run: RunView) -> str:
    """Markdown: what the run is and how far it got (the config itself is shown redacted elsewhere)."""
    st = run.state or {}
    c = st.get("counters", {})
    cfg = run.config or {}
    ck = run.latest_checkpoint()
    pop = st.get("population", [])
    lines = [f"**{run.name}** · mode `{cfg.get('mode')}` · task `{cfg.get('task')}` (level {cfg.get('level')}) · "
             f"model `{cfg.get('model')}`",
             f"cycles {c.get('cycle', 0)} · RL steps {c.get('rl_step', 0)} · GEPA rounds {c.get('fast_round', 0)} · "
             f"samples {c.get('samples_rl', 0) + c.get('samples_fast', 0)} · population {len(pop)} · "
             f"snapshots {run.cycles() or 'none yet'} · checkpoint `{ck.name if ck else 'none'}`"]
    return "\n\n".join(lines)


def config_yaml(run: RunView) -> str:
    return yaml.safe_dump(redact(run.config or {}), sort_keys=False)


def lineage_tree(edges: Sequence[dict], *, population: Sequence[str] = (), scores: dict | None = None,
                 best: str | None = None) -> str:
    """The lineage as a text tree (first parent = tree parent; extra parents are listed as 'merge of').

        🌱 seed      math@1a2b3c4d5e6f
        ├── 🧬 gepa r1  math@...  score 0.500  ★ population
        │   └── ✍️ manual r1  math@...
        └── 🧬 gepa r1  math@...
    """
    scores = scores or {}
    pop = set(population)
    by_id = {e["id"]: e for e in edges}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for e in edges:
        parents = [p for p in e.get("parents", []) if p in by_id and p != e["id"]]
        if parents:
            children.setdefault(parents[0], []).append(e["id"])
        else:
            roots.append(e["id"])
    order = lambda i: (by_id[i].get("round", 0), ORIGIN_ORDER.get(by_id[i].get("origin"), 9), i)  # noqa: E731
    lines: list[str] = []
    seen: set[str] = set()

    def label(i: str) -> str:
        e = by_id[i]
        s = f"{ORIGIN_MARK.get(e.get('origin'), e.get('origin'))} r{e.get('round', 0)}  {e.get('name')}@{i}"
        sc = scores.get(i)
        if isinstance(sc, (int, float)):
            s += f"  score {sc:.3f}"
        if i in pop:
            s += "  ● population"
        if best and i == best:
            s += "  ★ best"
        extra = [p for p in e.get("parents", [])[1:]]
        if extra:
            s += f"  (merge of {', '.join(extra)})"
        if e.get("note"):
            s += f"  — {' '.join(str(e['note']).split())[:80]}"
        return s

    def walk(i: str, prefix: str, last: bool, top: bool) -> None:
        if i in seen:  # lineage cycles can't happen with content ids, but never loop forever
            return
        seen.add(i)
        lines.append(label(i) if top else prefix + ("└── " if last else "├── ") + label(i))
        kids = sorted(children.get(i, []), key=order)
        for k, kid in enumerate(kids):
            walk(kid, prefix if top else prefix + ("    " if last else "│   "), k == len(kids) - 1, False)

    for r in sorted(roots, key=order):
        walk(r, "", True, True)
    for e in edges:  # anything unreachable (shouldn't happen) still shows up
        if e["id"] not in seen:
            walk(e["id"], "", True, True)
    if not lines:
        return "(no harnesses yet)"
    counts: dict[str, int] = {}
    for e in edges:
        counts[e.get("origin", "?")] = counts.get(e.get("origin", "?"), 0) + 1
    legend = " · ".join(f"{ORIGIN_MARK.get(k, k)} {v}"
                        for k, v in sorted(counts.items(), key=lambda kv: ORIGIN_ORDER.get(kv[0], 9)))
    return f"{len(edges)} harnesses: {legend}\n\n" + "\n".join(lines)


ORIGIN_ORDER = {"seed": 0, "bootstrap": 1, "gepa": 2, "merge": 3, "manual": 4}


def diff_html(diff: str) -> str:
    """A unified diff as coloured HTML lines (additions green, removals red)."""
    if not diff.strip():
        return "<p><em>The two harnesses are identical (lineage aside).</em></p>"
    rows = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            style = "color:#555;font-weight:bold"
        elif line.startswith("@@"):
            style = "color:#6f42c1"
        elif line.startswith("+"):
            style = "background:#e6ffed;color:#1a7f37"
        elif line.startswith("-"):
            style = "background:#ffebe9;color:#cf222e"
        else:
            style = "color:#333"
        rows.append(f'<div style="{style};white-space:pre-wrap">{html.escape(line) or "&nbsp;"}</div>')
    return ('<div class="fst-diff" style="font-family:ui-monospace,monospace;font-size:12px;line-height:1.35">'
            + "".join(rows) + "</div>")


def curve_figures(run: RunView | None):
    """Two matplotlib figures: reward vs samples (train, validation running max, GEPA best) and KL vs reward."""
    from matplotlib.figure import Figure

    f1 = Figure(figsize=(6, 3.6), tight_layout=True)
    ax = f1.subplots()
    f2 = Figure(figsize=(6, 3.6), tight_layout=True)
    bx = f2.subplots()
    plotted1 = plotted2 = False
    if run is not None:
        xs, ys = run.series("slow", "reward")
        if xs:
            ax.plot(xs, ys, marker=".", alpha=0.6, label="train reward (slow steps)")
            plotted1 = True
        xs, ys = run.series("eval", "reward")
        if xs:
            ax.plot(xs, running_max(ys), marker="o", label="validation (running max)")
            plotted1 = True
        xs, ys = run.series("fast", "best_val")
        if xs:
            ax.plot(xs, ys, marker="^", linestyle=":", label="GEPA best on its val window")
            plotted1 = True
        pts = [(_kl(m), m.get("reward")) for m in run.metrics if m.get("kind") in ("slow", "eval")]
        pts = [(k, r) for k, r in pts if k is not None and r is not None]
        if pts:
            bx.scatter([p[0] for p in pts], [p[1] for p in pts], s=18)
            plotted2 = True
    ax.set_xlabel("samples (RL rollouts + GEPA metric calls)")
    ax.set_ylabel("reward")
    ax.set_title("Reward vs samples")
    if plotted1:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no reward records yet", ha="center", va="center", transform=ax.transAxes)
    bx.set_xlabel("KL(policy ‖ start weights)")
    bx.set_ylabel("reward")
    bx.set_title("KL vs reward")
    if not plotted2:
        bx.text(0.5, 0.5, "no KL records yet", ha="center", va="center", transform=bx.transAxes)
    return f1, f2


def _kl(m: dict) -> float | None:
    for k in ("kl", "kl_probe", "kl_to_base"):
        v = m.get(k)
        if isinstance(v, (int, float)) and v == v:  # not NaN
            return float(v)
    return None


# ============================================================================ chat rendering
_TOOL_TAG = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)


def _esc(text: str) -> str:
    """Model text shown as text: tags like <tool_response> must not become HTML."""
    return html.escape(text or "", quote=False)


def _call_title(name: str, args: Any) -> str:
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        inner = json.dumps(args, ensure_ascii=False) if args is not None else ""
    if len(inner) > 80:
        inner = inner[:77] + "..."
    return f"🔧 {name}({inner})"


def harness_header(h: Harness) -> dict:
    """A collapsed message saying which harness this pane runs (its system prompt inside)."""
    n_shots = len(h.few_shot)
    tools = ", ".join(h.tool_names) or "none"
    body = (h.system_prompt or "(no system prompt)").strip()
    return {"role": "assistant", "content": _esc(body),
            "metadata": {"title": f"🧩 {h.name}@{h.id} · {n_shots} few-shot · tools: {tools}", "status": "done"}}


def chat_messages(messages: Sequence[dict], n_prompt: int, harness: Harness | None = None) -> list[dict]:
    """Trajectory messages -> Gradio chat messages.

    The user turn is the rendered task template (what the model saw); assistant text is shown as is;
    every tool call becomes a collapsible message titled ``🔧 name(args)`` holding its observation;
    a malformed call becomes ``⚠️ malformed tool call`` with the error the model was shown.
    """
    out: list[dict] = [harness_header(harness)] if harness is not None else []
    if n_prompt and messages[n_prompt - 1].get("role") == "user":
        out.append({"role": "user", "content": _esc(messages[n_prompt - 1].get("content", ""))})
    gen = list(messages[n_prompt:])
    used: set[int] = set()
    for i, m in enumerate(gen):
        role = m.get("role")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            text = m.get("content") or ""
            if calls:
                text = _TOOL_TAG.sub("", text)
            if text.strip():
                out.append({"role": "assistant", "content": _esc(text.strip())})
            elif not calls:
                out.append({"role": "assistant", "content": "*(empty response)*"})
            for c in calls:
                fn = c.get("function", {})
                obs = ""
                for j in range(i + 1, len(gen)):
                    t = gen[j]
                    if t.get("role") != "tool":
                        break
                    if j not in used and (t.get("tool_call_id") == c.get("id") or not c.get("id")):
                        obs = t.get("content", "")
                        used.add(j)
                        break
                out.append({"role": "assistant", "content": _esc(obs) or "(no observation)",
                            "metadata": {"title": _call_title(fn.get("name", "?"), fn.get("arguments")),
                                         "status": "done"}})
        elif role == "tool":
            if i in used:
                continue
            title = "⚠️ malformed tool call" if m.get("name") == "error" else _call_title(m.get("name", "?"), None)
            out.append({"role": "assistant", "content": _esc(m.get("content", "")),
                        "metadata": {"title": title, "status": "done"}})
        elif role == "user":
            out.append({"role": "user", "content": _esc(m.get("content", ""))})
    return out


def score_markdown(traj, scored: bool = True) -> str:
    if traj is None:
        return ""
    if getattr(traj, "error", None) and str(traj.error).startswith("rollout"):
        return f"**error**: {_esc(str(traj.error))}"
    calls = len(getattr(traj, "tool_calls", []) or [])
    meta = f"{traj.n_turns} turn(s) · {calls} tool call(s) · {traj.completion_tokens} tokens" + \
        (" · truncated" if traj.truncated else "")
    if not scored:
        return f"**not scored** (free text) · {meta}\n\n{_esc(traj.feedback)}"
    mark = "✅" if traj.reward >= 1.0 else ("🟡" if traj.reward > 0 else "❌")
    return f"**score {traj.reward:.2f}** {mark} · {meta}\n\n**feedback:** {_esc(traj.feedback)}"


# ============================================================================ weights
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
        """(policy, notice). ``weights``: base | trained. Missing/unloadable weights fall back to base."""
        model = (run.config or {}).get("model") if run is not None else None
        if weights != "trained":
            return self.base(model), f"weights: base (`{model or 'smollm2-135m'}`)"
        if run is None:
            return self.base(model), "⚠️ no run selected: trained weights need a run, using the base weights"
        ck = run.latest_checkpoint()
        if ck is None:
            return self.base(model), f"⚠️ run '{run.name}' has no checkpoint yet: using the base weights"
        key = (str(run.path), ck.name, _mtime(ck))
        with self._lock:
            if key in self._trained:
                return self._trained[key], f"weights: trained (`{run.name}/checkpoints/{ck.name}`)"
        try:
            pol = self._load_trained(model, ck)
        except Exception as e:  # a broken or foreign checkpoint must not take the arena down
            log.warning("could not load trained weights from %s: %s", ck, e)
            return self.base(model), (f"⚠️ could not load trained weights from `{ck.name}` ({e}): "
                                      "using the base weights")
        with self._lock:
            self._trained = {k: v for k, v in self._trained.items() if k[0] != key[0]}  # one per run
            self._trained[key] = pol
        return pol, f"weights: trained (`{run.name}/checkpoints/{ck.name}`)"

    def _load_trained(self, model: str | None, ck: Path):
        adapter_cfg, adapter = ck / "adapter_config.json", ck / "adapter_model.safetensors"
        full = ck / "model.safetensors"
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


# ============================================================================ arena (streaming rollouts)
class _Cancelled(Exception):
    pass


class _SideStreamer:
    """A transformers streamer for a batch: decodes each row's new tokens and reports (side, text)."""

    def __init__(self, tokenizer, sides: list[int], emit: Callable[[int, str], None], cancel: threading.Event):
        self.tok, self.sides, self.emit, self.cancel = tokenizer, sides, emit, cancel
        self.ids: list[list[int]] = [[] for _ in sides]
        self.done = [False] * len(sides)
        self._prompt_seen = False
        self._last = 0.0

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        rows = value.reshape(len(self.sides), -1).tolist() if value.numel() >= len(self.sides) else []
        eos = self.tok.eos_token_id
        for r, toks in enumerate(rows):
            if self.done[r]:
                continue
            for t in toks:
                if t == eos:
                    self.done[r] = True
                    break
                self.ids[r].append(t)
        now = time.time()
        if now - self._last > 0.05:  # decoding every token of every row is wasteful; 20 updates/s is plenty
            self._last = now
            self._flush()

    def end(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for r, side in enumerate(self.sides):
            self.emit(side, self.tok.decode(self.ids[r], skip_special_tokens=True))


def _cancel_criteria(cancel: threading.Event):
    """A stopping criterion that ends generation when the arena is abandoned (client gone)."""
    import torch
    from transformers import StoppingCriteria

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return _Cancel()


class _StreamingModel:
    """Wraps a model so every ``generate`` streams through our streamer (everything else delegates)."""

    def __init__(self, model, streamer_factory: Callable[[], Any], cancel: threading.Event):
        self._model, self._factory, self._cancel = model, streamer_factory, cancel

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        from transformers import StoppingCriteriaList

        crit = kwargs.pop("stopping_criteria", None) or StoppingCriteriaList()
        crit.append(_cancel_criteria(self._cancel))
        return self._model.generate(*args, streamer=self._factory(), stopping_criteria=crit, **kwargs)


class _TapPolicy:
    """A policy proxy for :func:`rollout_pairs` that reports progress per side without changing results.

    ``chat_prompt`` sees each conversation (its list object is the trajectory's own), so it reports the
    messages so far (incl. the last tool observations); ``generate_text`` streams tokens when the
    policy is a :class:`fst_lab.models.Policy` (via a streamer on ``model.generate``), and reports
    whole texts otherwise.
    """

    def __init__(self, policy, events: "queue.Queue", cancel: threading.Event):
        self.inner, self.events, self.cancel = policy, events, cancel
        self._side_of: dict[int, int] = {}
        self._pending: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chat_prompt(self, messages, tools=None):
        if self.cancel.is_set():
            raise _Cancelled()
        key = id(messages)
        if key not in self._side_of:  # the first turn renders sides in pair order
            self._side_of[key] = len(self._side_of)
        side = self._side_of[key]
        self._pending.append(side)
        self.events.put(("messages", side, [dict(m) for m in messages]))
        return self.inner.chat_prompt(messages, tools)

    def generate_text(self, prompts, **kw):
        sides, self._pending = self._pending[-len(prompts):], []
        from fst_lab.models import Policy

        model = getattr(self.inner, "model", None)
        if isinstance(self.inner, Policy) and hasattr(model, "generate"):
            emit = lambda side, text: self.events.put(("text", side, text))  # noqa: E731
            factory = lambda: _SideStreamer(self.inner.tokenizer, sides, emit, self.cancel)  # noqa: E731
            streaming = dataclasses.replace(self.inner, model=_StreamingModel(model, factory, self.cancel))
            gens = streaming.generate_text(prompts, **kw)
        else:
            gens = self.inner.generate_text(prompts, **kw)
        for side, g in zip(sides, gens):
            self.events.put(("text", side, g.text))
        if self.cancel.is_set():
            raise _Cancelled()
        return gens


@dataclass
class ArenaUpdate:
    """One frame of the arena: a chat per side; when ``done``, the scored trajectories too."""

    chats: list[list[dict]]
    done: bool = False
    trajectories: list = field(default_factory=list)
    error: str | None = None


def stream_arena(policy, pairs: Sequence[tuple[Harness, Any]], task, *, max_new_tokens: int | None = 64,
                 temperature: float = 0.0, seed: int = 0, cancel: threading.Event | None = None,
                 ) -> Iterator[ArenaUpdate]:
    """Run every (harness, example) pair through :func:`rollout_pairs` (one batch, tools executed,
    scored by ``task``) in a worker thread, yielding the chats as they grow. Close the generator (or
    set ``cancel``) to stop generation early."""
    from fst_lab.rollout import rollout_pairs

    cancel = cancel or threading.Event()
    events: queue.Queue = queue.Queue()
    tap = _TapPolicy(policy, events, cancel)
    n_prompt = [len(h.render(ex.inputs)[0]) for h, ex in pairs]
    result: dict[str, Any] = {}

    def work():
        try:
            result["trajs"] = rollout_pairs(tap, list(pairs), task, temperature=temperature,
                                            max_new_tokens=max_new_tokens, seed=seed, batch_size=max(1, len(pairs)))
        except _Cancelled:
            result["error"] = "cancelled"
        except Exception as e:  # shown in the panes, never raised into the UI thread
            log.exception("arena rollout failed")
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            events.put(("end", None, None))

    snap: list[list[dict]] = [h.render(ex.inputs)[0] for h, ex in pairs]
    live: list[str | None] = [None] * len(pairs)

    def frame() -> list[list[dict]]:
        out = []
        for s, (h, _) in enumerate(pairs):
            chat = chat_messages(snap[s], n_prompt[s], h)
            if live[s] is not None:
                chat.append({"role": "assistant", "content": _esc(live[s]) or "…"})
            out.append(chat)
        return out

    worker = threading.Thread(target=work, name="fst-arena", daemon=True)
    worker.start()
    try:
        yield ArenaUpdate(frame())
        ended = False
        while not ended:
            try:
                kind, side, payload = events.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [(kind, side, payload)]
            while True:  # coalesce whatever else arrived: one UI update per burst
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            for kind, side, payload in batch:
                if kind == "messages":
                    snap[side], live[side] = payload, None
                elif kind == "text":
                    live[side] = payload
                elif kind == "end":
                    ended = True
            if not ended:
                yield ArenaUpdate(frame())
        worker.join(timeout=5)
        trajs = result.get("trajs") or []
        if trajs:
            chats = [chat_messages(t.messages, t.n_prompt_messages, h) for t, (h, _) in zip(trajs, pairs)]
        else:
            chats = frame()
        yield ArenaUpdate(chats, done=True, trajectories=trajs, error=result.get("error"))
    finally:
        cancel.set()  # a closed generator (client gone) stops the worker at its next token


# ============================================================================ steering (Run tab)
TINY_CONFIG = """\
# A tiny FST run: one GEPA round and one RL step per cycle, small enough for 2 CPU cores.
# Keys: see FSTConfig (fst_lab/config.py). API keys don't belong here: name an environment
# variable instead (fast: {reflection_lm: openai/gpt-4.1-mini, api_key_env: OPENAI_API_KEY}).
mode: fst
task: math
level: 1
cycles: 1
steps_per_cycle: 1
population_size: 2
num_generations: 2
prompts_per_step: 1
fast_train_size: 2
fast_val_size: 2
eval_size: 2
eval_every_cycle: false
max_new_tokens: 32
fast:
  max_metric_calls: 6
  max_new_tokens: 32
  reflection_max_tokens: 128
  reflection_minibatch_size: 1
run_name: app-run
"""


class Steering:
    """The Run tab's one live Session: start from YAML, step fast/slow, run/pause/stop, hand-edit.

    Every action returns a short message (errors included, never raised), so the browser and the API
    get the same answer. Steps are serialised by the session's own lock; a background ``run`` refuses
    single steps until it is paused or stopped.
    """

    def __init__(self, runs_root: str | Path, policy_factory: Callable[[str], Any] | None = None):
        self.runs_root = Path(runs_root).resolve()
        self.factory = policy_factory or _default_factory
        self.session = None
        self.thread: threading.Thread | None = None
        self.log: deque[str] = deque(maxlen=200)
        self.last_error: str | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, config_text: str) -> str:
        from fst_lab.config import ConfigError, FSTConfig
        from fst_lab.session import Session, SessionError

        if self.busy:
            return "⚠️ a run is in progress: stop it before starting another session"
        try:
            d = yaml.safe_load(config_text or "") or {}
        except yaml.YAMLError as e:
            return f"❌ config is not valid YAML: {e}"
        if not isinstance(d, dict):
            return "❌ config must be a YAML mapping"
        secrets = secret_fields(d)
        if secrets:
            return (f"❌ refused: the config carries secret-looking fields {secrets}; the app never stores keys. "
                    "Set them as environment variables (e.g. OPENAI_API_KEY) instead.")
        name = d.get("run_name")
        if name is not None:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name.startswith("."):
                return f"❌ refused: run_name {name!r} must be a plain directory name (letters, digits, . _ -)"
        d.pop("runs_root", None)
        d["runs_root"] = str(self.runs_root)  # sessions started here always land inside the runs root
        try:
            cfg = FSTConfig.from_dict(d, source="config")
            if cfg.run_name:
                safe_run_path(cfg.run_name, self.runs_root)
            policy = self.factory(cfg.model)
            s = Session(cfg, policy=policy, progress=False)
        except (ConfigError, SessionError, RunDirError, HarnessError, ValueError) as e:
            return f"❌ {e}"
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # closing the old one is best effort
                pass
        self.session = s
        self.log.clear()
        s.listeners.append(self._on_record)
        return f"✅ session started: `{s.run_dir.relative_to(self.runs_root)}` (mode {cfg.mode}, task {cfg.task})"

    def _on_record(self, rec: dict) -> None:
        rec = redact(rec)
        rec.pop("diff", None)  # long; the lineage view shows edits
        self.log.append(json.dumps(rec, default=str, ensure_ascii=False)[:400])

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _need(self) -> str | None:
        if self.session is None:
            return "⚠️ no session: start one from a config first"
        if self.busy:
            return "⚠️ a background run is in progress: pause or stop it first"
        self._clear_stop()  # an explicit step after a Stop means "go on": forget the old stop request
        return None

    def _clear_stop(self) -> None:
        s = self.session
        if hasattr(s, "clear_stop"):
            s.clear_stop()
        else:  # older Session without clear_stop(): the stop file is the part we can undo
            (Path(s.run_dir) / "stop").unlink(missing_ok=True)

    # ---------------------------------------------------------------- steps
    def fast(self) -> str:
        if (msg := self._need()):
            return msg
        t0 = time.time()
        try:
            res = self.session.fast_step()
        except Exception as e:
            log.exception("fast step failed")
            return f"❌ fast step failed: {type(e).__name__}: {e}"
        best = getattr(res, "best_id", None)
        return f"✅ fast step (GEPA round {self.session.counters['fast_round']}) in {time.time() - t0:.1f}s: " \
               f"population {[h.id for h in self.session.population]}, best {best}"

    def slow(self, n: int = 1, progress: Callable[[int, int], None] | None = None) -> str:
        if (msg := self._need()):
            return msg
        n = max(1, int(n or 1))
        t0 = time.time()
        recs = []
        try:
            for i in range(n):
                if progress:
                    progress(i, n)
                recs += self.session.slow_step(1)
        except Exception as e:
            log.exception("slow step failed")
            return f"❌ slow step failed after {len(recs)} step(s): {type(e).__name__}: {e}"
        last = recs[-1] if recs else {}
        rw = last.get("reward")
        return f"✅ {len(recs)} slow step(s) in {time.time() - t0:.1f}s: " \
            f"RL step {self.session.counters['rl_step']}" + \
            (f", train reward {rw:.3f}" if isinstance(rw, (int, float)) else "")

    def run(self, cycles: int | None = None) -> str:
        if (msg := self._need()):
            return msg
        s = self.session

        def work():
            try:
                s.run(int(cycles) if cycles else None)
            except Exception as e:
                log.exception("background run failed")
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                (Path(s.run_dir) / "stop").unlink(missing_ok=True)  # honoured; see stop()

        self.last_error = None
        self.thread = threading.Thread(target=work, name="fst-app-run", daemon=True)
        self.thread.start()
        return (f"▶️ running {cycles or 'the remaining'} cycle(s) in the background "
                "(pause / stop at any step boundary)")

    def pause(self) -> str:
        if self.session is None:
            return "⚠️ no session"
        self.session.pause()
        return "⏸️ paused: the run waits at the next step boundary"

    def resume(self) -> str:
        if self.session is None:
            return "⚠️ no session"
        self.session.resume_work()
        return "▶️ resumed"

    def stop(self) -> str:
        if self.session is None:
            return "⚠️ no session"
        self.session.request_stop()
        if self.busy:
            # Also the documented RUN/stop file: unlike the in-memory flag, run() can't clear it if the
            # request lands while the worker is still starting up. The worker removes it when it ends.
            (Path(self.session.run_dir) / "stop").touch()
            self.thread.join(timeout=0.5)
        return "⏹️ stop requested: the run ends at the next step boundary" if self.busy else "⏹️ stopped"

    # ---------------------------------------------------------------- hand edits
    def population_choices(self) -> list[tuple[str, str]]:
        if self.session is None:
            return []
        s = self.session
        return [(f"{i}: {h.name}@{h.id} ({ORIGIN_MARK.get(h.lineage.origin, h.lineage.origin)})", h.id)
                for i, h in enumerate(s.population)]

    def components(self, target: str | None) -> list[str]:
        h = self._member(target)
        return h.components() if h is not None else []

    def component_text(self, target: str | None, component: str | None) -> str:
        h = self._member(target)
        if h is None or not component:
            return ""
        try:
            return h.component(component)
        except HarnessError as e:
            return f"# {e}"

    def _member(self, target: str | None) -> Harness | None:
        if self.session is None:
            return None
        for h in self.session.population:
            if h.id == target:
                return h
        return self.session.population[0] if self.session.population and not target else None

    def edit(self, target: str | None, component: str, text: str, note: str = "") -> str:
        if self.session is None:
            return "⚠️ no session: start one first"
        if not component:
            return "⚠️ pick a component to edit"
        try:
            new = self.session.edit_harness(target or None, {component: text}, note=note or "edited in the app")
        except (HarnessError, KeyError, IndexError, ValueError) as e:
            return f"❌ edit refused: {e}"
        return (f"✍️ manual edit recorded: {new.name}@{new.id} (parent {new.lineage.parents[0]}), "
                "used from the next step")

    # ---------------------------------------------------------------- views
    def status(self) -> dict:
        if self.session is None:
            return {"session": None, "hint": "start a session from the config"}
        st = redact(self.session.status())
        st["run_dir"] = str(Path(st["run_dir"]).resolve().relative_to(self.runs_root))
        st["background_run"] = "running" if self.busy else "idle"
        if self.last_error:
            st["last_error"] = self.last_error
        return st

    def lineage_text(self) -> str:
        if self.session is None:
            return "(no session)"
        s = self.session
        notes = {hid: h.lineage.note for hid, h in s.harnesses.items()}  # Session.lineage() leaves notes out
        edges = [{**e, "note": e.get("note") or notes.get(e["id"], "")} for e in s.lineage()]
        return lineage_tree(edges, population=[h.id for h in s.population], scores=s.population_scores,
                            best=s.best_harness().id)

    def log_text(self) -> str:
        return "\n".join(self.log)
