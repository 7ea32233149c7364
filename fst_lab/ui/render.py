"""HTML for the dashboard: status line, population and lineage tables, a trajectory, a diff.

Pure functions of plain data (status dicts, lineage rows, trajectory dicts), escaped throughout:
harness texts and model outputs are untrusted and must never become markup.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

from fst_lab.ui.plots import ORIGIN_COLORS

STYLE = """<style>
.fst-mono textarea { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.fst-table { border-collapse: collapse; font-size: 12px; }
.fst-table th, .fst-table td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.fst-msg { border-left: 3px solid #ccc; margin: 4px 0; padding: 2px 8px; white-space: pre-wrap;
           font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.fst-role-system { border-color: #7f7f7f; } .fst-role-user { border-color: #1f77b4; }
.fst-role-assistant { border-color: #2ca02c; } .fst-role-tool { border-color: #ff7f0e; background: #fff8ef; }
.fst-diff { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; white-space: pre; }
</style>"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return esc(v)


def status_html(st: Mapping[str, Any], activity: str = "", *, busy: bool = False) -> str:
    """One line: what is running, cycle / RL step / fast round, samples, elapsed."""
    flags = []
    if st.get("paused"):
        flags.append("<b style='color:#b36b00'>paused</b>")
    if st.get("stopped"):
        flags.append("<b style='color:#b00'>stop requested</b>")
    dot = "<span style='color:#2ca02c'>&#9679;</span>" if busy else "<span style='color:#999'>&#9679;</span>"
    parts = [
        f"{dot} <b>{esc(activity or ('running' if busy else 'idle'))}</b>",
        f"mode <code>{esc(st.get('mode'))}</code> · task <code>{esc(st.get('task'))}</code>",
        f"cycle {esc(st.get('cycle'))} · RL step {esc(st.get('rl_step'))} · fast round {esc(st.get('fast_round'))}",
        f"samples {esc(st.get('samples'))} (RL {esc(st.get('samples_rl'))} + fast {esc(st.get('samples_fast'))})",
        f"elapsed {float(st.get('elapsed') or 0):.1f} s",
    ]
    return "<div>" + " &nbsp;|&nbsp; ".join(parts + flags) + "</div>"


def error_html(message: str) -> str:
    if not message:
        return ""
    return (f"<div style='color:#b00;border:1px solid #e99;background:#fff4f4;padding:4px 8px;"
            f"white-space:pre-wrap;font-family:monospace;font-size:12px'>{esc(message)}</div>")


def ok_html(message: str) -> str:
    return f"<div style='color:#276b27'>{esc(message)}</div>" if message else ""


def _origin(origin: str) -> str:
    return f"<span style='color:{ORIGIN_COLORS.get(origin, '#333')};font-weight:600'>{esc(origin)}</span>"


def population_html(lineage: Sequence[Mapping[str, Any]], population: Sequence[str], best: str | None = None) -> str:
    """The live population (in order), each row with its score, origin, round and parents."""
    by_id = {r["id"]: r for r in lineage}
    rows = ["<table class='fst-table'><tr><th>#</th><th>id</th><th>name</th><th>origin</th><th>round</th>"
            "<th>parents</th><th>score</th><th></th></tr>"]
    for i, hid in enumerate(population):
        r = by_id.get(hid, {"id": hid})
        star = "&#9733; best" if hid == best else ""
        rows.append(f"<tr><td>{i}</td><td><code>{esc(hid)}</code></td><td>{esc(r.get('name'))}</td>"
                    f"<td>{_origin(r.get('origin', ''))}</td><td>{_fmt(r.get('round'))}</td>"
                    f"<td>{', '.join(f'<code>{esc(p)}</code>' for p in r.get('parents', [])) or '–'}</td>"
                    f"<td>{_fmt(r.get('score'))}</td><td>{star}</td></tr>")
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


def diff_html(diff: str) -> str:
    if not diff:
        return "<i>no difference</i>"
    out = []
    for line in diff.splitlines():
        color = "#276b27" if line.startswith("+") else "#b00" if line.startswith("-") else "#555"
        if line.startswith(("+++", "---", "@@")):
            color = "#555"
        out.append(f"<span style='color:{color}'>{esc(line)}</span>")
    return "<div class='fst-diff'>" + "\n".join(out) + "</div>"


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
    prompt = "".join(_message_html(m) for m in msgs[:n_prompt])
    if prompt:
        parts.append(f"<details><summary>prompt ({n_prompt} messages from the harness)</summary>{prompt}</details>")
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
