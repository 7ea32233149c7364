"""HTML and text views shared by the dashboard, the app and reports: status and progress, result
summaries, population and lineage, a trajectory, a diff.

Pure functions of plain data (status dicts, metric records, lineage rows, trajectory dicts), escaped
throughout: harness texts and model outputs are untrusted and must never become markup. No widgets
or Gradio imports.

    >>> status_html(session.status(), runner.state())   # "● slow step 2/4 | RL step 3/4 · reward 0.5 | ..."
    >>> result_summary(load_run("runs/demo").metrics)    # "validation 0.375 → 0.562 · ablation ..."
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

from fst_lab import records as R
from fst_lab.ui.plots import ORIGIN_COLORS, unscored

STYLE = """<style>
.fst-mono textarea { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.fst-table { border-collapse: collapse; font-size: 12px; }
.fst-table th, .fst-table td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.fst-msg { border-left: 3px solid #ccc; margin: 4px 0; padding: 2px 8px; white-space: pre-wrap;
           font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.fst-role-system { border-color: #7f7f7f; } .fst-role-user { border-color: #1f77b4; }
.fst-role-assistant { border-color: #2ca02c; } .fst-role-tool { border-color: #ff7f0e; background: #fff8ef; }
.fst-diff { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.fst-dashboard .widget-button:disabled, .fst-dashboard .jupyter-button:disabled { opacity: 0.45; }
.fst-dashboard .mod-danger:disabled { background: #e0e0e0 !important; color: #777 !important; }
.fst-progress { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; color: #333; }
</style>"""

ORIGIN_MARK = {"seed": "🌱 seed", "gepa": "🧬 gepa", "reflect": "🧬 reflect", "bootstrap": "🥾 bootstrap",
               "manual": "✍️ manual", "merge": "🔀 merge", "consolidated": "🧱 consolidated"}
ORIGIN_ORDER = {"seed": 0, "bootstrap": 1, "reflect": 2, "gepa": 2, "merge": 3, "manual": 4}
ABLATION_NAMES = {"base_weights+seed_harness": "base+seed", "base_weights+evolved_harness": "base+evolved",
                  "trained_weights+seed_harness": "trained+seed", "trained_weights+evolved_harness": "trained+evolved"}


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return esc(v)


# ---------------------------------------------------------------------------- state and progress
def state_line(state: Mapping[str, Any]) -> str:
    """Plain text of a runner state: ``● slow step 2/4 — RL step 2/4 · reward 0.500`` / ``○ idle``."""
    if not state.get("session", True):
        return "○ no session"
    if state.get("busy"):
        word = state.get("activity") or "working"
        line = f"● {word}" + (" (paused)" if state.get("paused") else "")
        if state.get("progress"):
            line += f" — {state['progress']}"
    elif state.get("stop_requested"):
        line = "○ stopped (a stop was requested; the next step you start clears it)"
    else:
        line = "○ idle" + (" (paused)" if state.get("paused") else "")
    if state.get("stop_requested") and state.get("busy"):
        line += " · stop requested"
    return line


def status_html(st: Mapping[str, Any], state: Mapping[str, Any] | None = None,
                last_eval: Mapping[str, Any] | None = None, last_step: Mapping[str, Any] | None = None) -> str:
    """The dashboard's status: busy/paused/idle and progress (from the runner state), then where the
    run is (cycle, RL step, fast round, samples, elapsed) from ``session.status()``, the last RL step's
    sampled reward (``last_step``, a slow record) with the share of its rollouts that gave no answer, then the
    last evaluation (``last_eval``, an eval record) with a warning when its reward says nothing of skill."""
    state = dict(state or {"busy": st.get("busy"), "activity": st.get("activity"), "paused": st.get("paused")})
    busy, paused = bool(state.get("busy")), bool(state.get("paused"))
    color = "#b36b00" if paused else "#2ca02c" if busy else "#999"
    line = esc(state_line(state)).replace("●", f"<span style='color:{color}'>&#9679;</span>", 1)
    line = line.replace("○", f"<span style='color:{color}'>&#9675;</span>", 1)
    where = [
        f"mode <code>{esc(st.get('mode'))}</code> · task <code>{esc(st.get('task'))}</code>",
        f"cycle {esc(st.get('cycle'))} · RL step {esc(st.get('rl_step'))} · fast round {esc(st.get('fast_round'))}",
        f"samples {esc(st.get('samples'))} (RL {esc(st.get('samples_rl'))} + fast {esc(st.get('samples_fast'))})",
        f"elapsed {float(st.get('elapsed') or 0):.1f} s",
    ]
    if last_step and isinstance(last_step.get("reward"), (int, float)):
        unparsed = train_unparsed_text(last_step)
        where.append(f"last RL step reward {last_step['reward']:.3f}" + (f" ({unparsed})" if unparsed else ""))
    if last_eval and isinstance(last_eval.get("reward"), (int, float)):
        where.append(f"last evaluation {last_eval['reward']:.3f}")
    err = f"<div style='color:#b00'>{esc(state['error'])}</div>" if state.get("error") else ""
    warning = answers_warning(last_eval)
    if warning:
        err += f"<div style='color:#b36b00'>⚠ it {esc(warning)}</div>"
    return (f"<div class='fst-status'><div class='fst-progress'><b>{line}</b></div>"
            f"<div>{' &nbsp;|&nbsp; '.join(where)}</div>{err}</div>")


# ---------------------------------------------------------------------------- results
COLLAPSE_SHARE = 0.9  # an evaluation giving one answer to (or parsing none in) this share of examples is called out


def answers_text(rec: Mapping[str, Any] | None) -> str | None:
    """"100% 'SUPPORTED' (a constant answer scores 0.500)" for an eval record with answer statistics
    (:func:`fst_lab.evaluation.answer_stats`), "no answer parsed" when none parsed; None without them."""
    if not rec or not isinstance(rec.get("answer_top_share"), (int, float)):
        return None
    if rec.get("answer_top") is None:
        return "no answer parsed"
    floor = R.constant_floor(rec)
    return (f"{rec['answer_top_share']:.0%} {rec['answer_top']!r}"
            + (f" (a constant answer scores {floor:.3f})" if floor is not None else ""))


def answers_warning(rec: Mapping[str, Any] | None) -> str | None:
    """What is wrong with an evaluation, when its reward says nothing of skill: it "parsed no answer in 95% of
    examples", "gave one answer: 100% 'SUPPORTED' (…)" ("mostly one answer" below 100%), or "scored 0.469,
    within 2 standard errors (±0.125) of a constant answer's 0.500" (the standard error of a mean over ``n``
    examples at most ``sqrt(r(1 - r) / n)`` for rewards in [0, 1]); None when it is clear of all three, or the
    record lacks the statistics."""
    rec = rec or {}
    num = lambda key: rec.get(key) if isinstance(rec.get(key), (int, float)) else None  # noqa: E731
    unparsed, share, reward, n = (num(k) for k in ("answer_unparsed", "answer_top_share", "reward", "n"))
    floor = R.constant_floor(rec)
    if unparsed is not None and unparsed >= COLLAPSE_SHARE:
        return f"parsed no answer in {unparsed:.0%} of examples"
    if share is not None and share >= COLLAPSE_SHARE:
        return f"gave {'one answer' if share >= 1 else 'mostly one answer'}: {answers_text(rec)}"
    if None not in (reward, floor, n) and n > 0 and 0.0 <= reward <= 1.0:
        band = 2 * (reward * (1 - reward) / n) ** 0.5
        if abs(reward - floor) <= band:
            return (f"scored {reward:.3f}, within 2 standard errors (±{band:.3f}) of a constant answer's "
                    f"{floor:.3f}")
    return None


def train_unparsed_text(rec: Mapping[str, Any] | None) -> str | None:
    """"38% of rollouts gave no answer, 25% hit the token cap" for an RL step record whose sampled rollouts did
    not all give a parsable answer (those score 0 like wrong ones; it is why a sampled train reward can sit far
    below a greedy evaluation, and the cap share says whether ``max_new_tokens`` or the sampling is to blame);
    None when every rollout answered or the record predates the count."""
    rec = rec or {}
    share, cut = rec.get("fst/answer_unparsed"), rec.get("fst/truncated")
    if not isinstance(share, (int, float)) or share <= 0:
        return None
    return f"{share:.0%} of rollouts gave no answer" + (
        f", {cut:.0%} hit the token cap" if isinstance(cut, (int, float)) and cut > 0 else "")


def result_summary(metrics: Sequence[Mapping[str, Any]]) -> str:
    """One line: validation reward first → last (best) and the 2x2 ablation, or what is missing."""
    recs = R.normalize_all([dict(m) for m in metrics])
    ev = [r for r in R.of_kind(recs, R.EVAL) if isinstance(r.get("reward"), (int, float))]
    parts = []
    if ev:
        first, last = ev[0]["reward"], ev[-1]["reward"]
        best = max(r["reward"] for r in ev)
        parts.append(f"validation {first:.3f} → {last:.3f}" + (f" (best {best:.3f})" if best > last else "")
                     + f" over {len(ev)} evaluation{'s' if len(ev) != 1 else ''}")
        warning = answers_warning(ev[-1])
        if warning:
            parts.append(f"⚠ last evaluation {warning}")
    else:
        parts.append("not evaluated yet")
    ab = R.latest(recs, R.ABLATION)
    if ab:
        cells = [f"{short} {ab[k]:.3f}" for k, short in ABLATION_NAMES.items() if isinstance(ab.get(k), (int, float))]
        if cells:
            parts.append("ablation " + " / ".join(cells))
    rl = R.latest(recs, R.SLOW, "reward")
    if rl:
        unparsed = train_unparsed_text(rl)
        parts.append(f"last train reward {rl['reward']:.3f} (RL step {rl.get('rl_step', '?')}"
                     + (f"; {unparsed}" if unparsed else "") + ")")
    return " · ".join(parts)


def run_summary(run) -> str:
    """Markdown for a run (a :class:`fst_lab.runs.RunView`): its result line first, then what it is."""
    st = run.state or {}
    c = st.get("counters", {})
    cfg = run.config or {}
    ck = run.latest_checkpoint()
    pop = st.get("population", [])
    return "\n\n".join([
        f"**{run.name}** — **{result_summary(run.metrics)}**",
        f"mode `{cfg.get('mode')}` · task `{cfg.get('task')}` (level {cfg.get('level')}) · model `{cfg.get('model')}`"
        f" · cycles {c.get('cycle', 0)} · RL steps {c.get('rl_step', 0)} · GEPA rounds {c.get('fast_round', 0)} · "
        f"samples {c.get('samples_rl', 0) + c.get('samples_fast', 0)} · population {len(pop)} · "
        f"checkpoint `{ck.name if ck else 'none'}`"])


def error_html(message: str) -> str:
    if not message:
        return ""
    return (f"<div style='color:#b00;border:1px solid #e99;background:#fff4f4;padding:4px 8px;"
            f"white-space:pre-wrap;font-family:monospace;font-size:12px'>{esc(message)}</div>")


def ok_html(message: str) -> str:
    return f"<div style='color:#276b27'>{esc(message)}</div>" if message else ""


def _origin(origin: str) -> str:
    return f"<span style='color:{ORIGIN_COLORS.get(origin, '#333')};font-weight:600'>{esc(origin)}</span>"


def population_html(lineage: Sequence[Mapping[str, Any]], population: Sequence[str], best: str | None = None,
                    mode: str | None = None) -> str:
    """The live population (in order), each row with its score (:func:`unscored` without one), origin, round
    and parents."""
    by_id = {r["id"]: r for r in lineage}
    rows = ["<table class='fst-table'><tr><th>#</th><th>id</th><th>name</th><th>origin</th><th>round</th>"
            "<th>parents</th><th>score</th><th></th></tr>"]
    for i, hid in enumerate(population):
        r = by_id.get(hid, {"id": hid})
        star = "&#9733; best" if hid == best else ""
        rows.append(f"<tr><td>{i}</td><td><code>{esc(hid)}</code></td><td>{esc(r.get('name'))}</td>"
                    f"<td>{_origin(r.get('origin', ''))}</td><td>{_fmt(r.get('round'))}</td>"
                    f"<td>{', '.join(f'<code>{esc(p)}</code>' for p in r.get('parents', [])) or '–'}</td>"
                    f"<td>{_fmt(r.get('score')) if r.get('score') is not None else f'<i>{unscored(mode)}</i>'}</td>"
                    f"<td>{star}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def lineage_html(lineage: Sequence[Mapping[str, Any]]) -> str:
    """Every harness the run has seen, as an indented tree (children under their first parent)."""
    by_id = {r["id"]: r for r in lineage}
    children: dict[str | None, list[str]] = {}
    for r in lineage:
        parent = next((p for p in r.get("parents", []) if p in by_id), None)
        children.setdefault(parent, []).append(r["id"])
    lines: list[str] = []

    def walk(hid: str, depth: int, seen: set) -> None:
        if hid in seen:
            return
        seen.add(hid)
        r = by_id[hid]
        live = " <b>(in population)</b>" if r.get("in_population") else ""
        extra = [p for p in r.get("parents", [])[1:]]
        merge = f" ← also {', '.join(esc(p) for p in extra)}" if extra else ""
        note = f" — <i>{esc(r.get('note'))}</i>" if r.get("note") else ""
        lines.append(f"<div style='margin-left:{depth * 18}px;font-size:12px'>"
                     f"{'└ ' if depth else ''}<code>{esc(hid)}</code> {_origin(r.get('origin', ''))} "
                     f"round {_fmt(r.get('round'))} · score {_fmt(r.get('score'))}{merge}{live}{note}</div>")
        for c in children.get(hid, []):
            walk(c, depth + 1, seen)

    seen: set = set()
    for root in children.get(None, []):
        walk(root, 0, seen)
    for r in lineage:  # anything left (cycles should not happen, but never hide a harness)
        walk(r["id"], 0, seen)
    return "".join(lines) or "<i>no harnesses yet</i>"


def diff_html(diff: str, header: str = "") -> str:
    """A unified diff as coloured HTML lines (additions green, removals red), under ``header`` (which
    harnesses are compared, so the view can never show a stale pair)."""
    head = f"<div class='fst-diff-header'><b>{esc(header)}</b></div>" if header else ""
    if not diff.strip():
        return head + "<p><em>The two harnesses are identical (lineage aside).</em></p>"
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
        rows.append(f'<div style="{style};white-space:pre-wrap">{esc(line) or "&nbsp;"}</div>')
    return (head + '<div class="fst-diff" style="font-family:ui-monospace,monospace;font-size:12px;'
            'line-height:1.35;white-space:normal">' + "".join(rows) + "</div>")


def trajectory_dict(t: Any) -> dict:
    """A Trajectory (object) or a rollouts/*.jsonl record (dict) as one dict."""
    if isinstance(t, dict):
        return t
    if hasattr(t, "to_json"):
        return t.to_json()
    return dict(vars(t))


def trajectory_label(t: Mapping[str, Any], i: int) -> str:
    r = t.get("reward")
    r = f"{r:.2f}" if isinstance(r, (int, float)) else "?"
    return f"{i}: {t.get('example_id', '?')} · harness {str(t.get('harness_id', '?'))[:8]} · reward {r}"


def trajectory_html(t: Mapping[str, Any]) -> str:
    """Messages (prompt part folded), tool calls and observations, then reward and feedback."""
    msgs = t.get("messages") or []
    n_prompt = int(t.get("n_prompt_messages") or 0)
    head = (f"<div><b>example</b> <code>{esc(t.get('example_id'))}</code> · <b>harness</b> "
            f"<code>{esc(t.get('harness_id'))}</code> · sample {esc(t.get('sample'))} · "
            f"<b>reward {_fmt(t.get('reward'))}</b>"
            + (" · <span style='color:#b36b00'>truncated</span>" if t.get("truncated") else "") + "</div>")
    parts = [head]
    # The harness part of the prompt (system prompt, few-shot) folds away; the question itself (the
    # prompt's last user message) stays visible.
    question = n_prompt if n_prompt and msgs[n_prompt - 1].get("role") == "user" else None
    folded = msgs[:n_prompt - 1] if question else msgs[:n_prompt]
    prompt = "".join(_message_html(m) for m in folded)
    if prompt:
        parts.append(f"<details><summary>harness prompt ({len(folded)} messages: system prompt, few-shot)"
                     f"</summary>{prompt}</details>")
    if question:
        parts.append(_message_html(msgs[n_prompt - 1]))
    parts.extend(_message_html(m) for m in msgs[n_prompt:])
    if t.get("error"):
        parts.append(error_html(f"error: {t['error']}"))
    parts.append(f"<div class='fst-msg' style='border-color:#9467bd'><b>feedback</b>\n{esc(t.get('feedback'))}</div>")
    return "".join(parts)


def _message_html(m: Mapping[str, Any]) -> str:
    role = m.get("role", "?")
    label = role if role != "tool" else f"tool result ({m.get('name', '')})"
    body = esc(m.get("content") or "")
    for c in m.get("tool_calls") or []:
        fn = c.get("function", c)
        args = fn.get("arguments")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        body += f"\n<b>&#8594; tool call</b> <code>{esc(fn.get('name'))}({esc(args)})</code>"
    return f"<div class='fst-msg fst-role-{esc(role)}'><b>{esc(label)}</b>\n{body}</div>"


def rollout_source_label(name: str) -> str:
    """A rollouts/*.jsonl file name as words: ``slow_000003.jsonl`` -> ``RL step 3 (training rollouts)``."""
    stem = name[:-6] if name.endswith(".jsonl") else name
    kind, _, num = stem.rpartition("_")
    n = int(num) if num.isdigit() else None
    if n is None:
        return name
    return {"slow": f"RL step {n} (training rollouts)", "eval": f"evaluation {n} (validation rollouts)",
            "fast": f"GEPA round {n}", "consolidate": f"consolidation step {n}"}.get(kind, name)


# ---------------------------------------------------------------------------- lineage as text
def best_scored(population: Sequence[str], scores: Mapping[str, Any]) -> str | None:
    """The best *scored* member (a fresh hand edit is "not evaluated", never "★ best")."""
    scored = [h for h in population if isinstance(scores.get(h), (int, float))]
    return max(scored, key=lambda h: scores[h]) if scored else None


def lineage_tree(edges: Sequence[dict], *, population: Sequence[str] = (), scores: dict | None = None,
                 best: str | None = None, mode: str | None = None) -> str:
    """The lineage as a text tree (first parent = tree parent; extra parents are listed as 'merge of').

        🌱 seed      math@1a2b3c4d5e6f
        ├── 🧬 gepa r1  math@...  score 0.500  ● population
        │   └── ✍️ manual r1  math@...  not evaluated
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
        elif i in pop:
            s += f"  {unscored(mode)}"
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
