"""The harness editor's logic, without widgets: texts from the editor -> a validated edit, or an error.

The dashboard shows one text box per component (system prompt, task template, few-shot as YAML,
each tool's description) plus the whole tools list as JSON. :func:`build_edit` turns what the user
typed into what :meth:`Session.edit_harness` accepts — a ``{component: text}`` mapping when only
component texts changed, a whole :class:`Harness` when the tools list changed — and validates it
first, so a bad edit raises :class:`HarnessError` and nothing reaches the session.

    >>> texts = editor_texts(h)
    >>> texts["system_prompt"] = "Think step by step."
    >>> build_edit(h, texts)                    # {'system_prompt': 'Think step by step.'}
"""

from __future__ import annotations

import json
from typing import Any

from fst_lab.harness import TOOL_DESC_PREFIX, Harness, HarnessError

TOOLS_JSON = "tools_json"  # key of the whole-tools-list text in editor_texts()


def tools_to_json(harness: Harness) -> str:
    return json.dumps(list(harness.tools), indent=2, ensure_ascii=False)


def editor_texts(harness: Harness) -> dict[str, str]:
    """What the editor shows for ``harness``: every component's text, and the tools list as JSON."""
    texts = {comp: harness.component(comp) for comp in harness.components()}
    texts[TOOLS_JSON] = tools_to_json(harness)
    return texts


def parse_tools_json(text: str) -> list[dict]:
    """The tools text as a list (JSON syntax and shape only; the schema check happens on the harness)."""
    try:
        tools = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise HarnessError(f"tools: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                           path="tools") from None
    if not isinstance(tools, list):
        raise HarnessError(f"tools: expected a JSON list of function specs, got {type(tools).__name__}",
                           path="tools")
    return tools


def build_edit(old: Harness, texts: dict[str, str]) -> dict[str, str] | Harness | None:
    """Validate the editor's texts against ``old``; return the edit for ``Session.edit_harness``.

    Returns None when nothing changed. Raises :class:`HarnessError` (naming the field) when the
    tools JSON does not parse, breaks the harness schema, or a component text is invalid.
    A changed tool-description box wins over the same description inside the tools JSON.
    """
    before = editor_texts(old)
    changed = {k: v for k, v in texts.items() if k in before and k != TOOLS_JSON and v != before[k]}
    tools_text = texts.get(TOOLS_JSON, before[TOOLS_JSON])
    tools = parse_tools_json(tools_text)
    tools_changed = tools != list(old.tools)
    if not tools_changed and not changed:
        return None
    if not tools_changed:
        # Component edits only: validate now (with_components raises on a bad few-shot or template).
        old.with_components(changed, origin="manual")
        return changed
    # The tools list changed: a harness with the new list, then the component edits through
    # Harness.with_components (the one place components are applied; its lineage is replaced by the
    # session's manual edit).
    names = [t.get("function", {}).get("name") for t in tools
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    for comp in changed:
        name = comp[len(TOOL_DESC_PREFIX):] if comp.startswith(TOOL_DESC_PREFIX) else None
        if name is not None and name not in names:
            raise HarnessError(f"the description box of tool '{name}' was edited, but the tools JSON no "
                               f"longer has a tool named '{name}'", path=comp)
    data: dict[str, Any] = old.to_dict(with_lineage=False)
    data["tools"] = tools
    base = Harness.from_dict(data, source="<tools JSON>")
    return base.with_components(changed, origin="manual") if changed else base
