"""Tool calls: parse them from model text, run them through a registry, never crash the rollout.

A harness *declares* tools (OpenAI function specs); a task *implements* them (``task.tool_impls()``).
The model's text is parsed for calls in the formats chat templates produce:

    <tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>     (Hermes / Qwen / SmolLM)
    {"name": "search", "arguments": {...}}                                       (bare JSON, one per line)

A malformed call becomes an *error observation* fed back to the model, never an exception. Tools that
run code do so through :mod:`fst_lab.sandbox` (subprocess, time/memory limits, no network).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)

MAX_OBSERVATION_CHARS = 2000


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = ""
    observation: str = ""
    error: str | None = None  # set when the call was malformed or the tool failed

    def to_message_call(self) -> dict:
        """OpenAI-format tool call for the assistant message."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParseResult:
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one per malformed call attempt

    @property
    def attempted(self) -> bool:
        return bool(self.calls or self.errors)


def _coerce_call(obj: Any) -> tuple[ToolCall | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"a tool call must be a JSON object, got {type(obj).__name__}"
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI-shaped
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, "tool call has no \"name\""
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return None, f"arguments of '{name}' are not valid JSON: {e.msg}"
        except RecursionError:
            return None, f"arguments of '{name}' are nested too deeply"
    if not isinstance(args, dict):
        return None, f"arguments of '{name}' must be an object, got {type(args).__name__}"
    return ToolCall(name=name, arguments=args), None


def parse_tool_calls(text: str) -> ParseResult:
    """Find tool calls in ``text``. Tagged calls win; bare JSON objects are accepted as a fallback."""
    res = ParseResult()
    if not text:
        return res
    chunks = _TAGGED.findall(text)
    if not chunks:
        chunks = _FENCED.findall(text)
    if not chunks:
        chunks = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("{") and '"name"' in ln]
    for chunk in chunks:
        try:
            obj = json.loads(chunk)
        except json.JSONDecodeError as e:
            res.errors.append(f"could not parse tool call {chunk[:120]!r}: {e.msg} at column {e.colno}")
            continue
        except RecursionError:
            res.errors.append(f"could not parse tool call {chunk[:120]!r}: nested too deeply")
            continue
        objs = obj if isinstance(obj, list) else [obj]
        for o in objs:
            call, err = _coerce_call(o)
            if err:
                res.errors.append(err)
            else:
                call.id = f"call_{len(res.calls)}"
                res.calls.append(call)
    return res


def warn_unimplemented(harness, task, where: str) -> str | None:
    """Warn (and return the warning) when ``harness`` declares tools ``task`` does not implement: every call to
    them gets an error observation (a typo in a hand-edited tool name; or, on purpose, a task-agnostic harness
    such as ``generic`` carried across tasks). None when every declared tool is implemented."""
    impls = task.tool_impls() if hasattr(task, "tool_impls") else {}
    missing = [name for name in harness.tool_names if name not in impls]
    if not missing:
        return None
    msg = (f"{where}: declares tool(s) {missing} that task '{getattr(task, 'name', task)}' does not implement (it "
           f"implements {sorted(impls)}); each call to them gets an error observation")
    log.warning(msg)
    return msg


class ToolRegistry:
    """Maps declared tool names to Python callables and runs calls safely."""

    def __init__(self, impls: dict[str, Callable[..., Any]] | None = None, declared: list[dict] | None = None):
        self.impls = dict(impls or {})
        self.declared = {t["function"]["name"]: t["function"] for t in (declared or [])}

    def run(self, call: ToolCall) -> ToolCall:
        """Fill ``call.observation`` (and ``call.error`` when it failed). Never raises."""
        if self.declared and call.name not in self.declared:
            call.error = f"unknown tool '{call.name}'; available: {sorted(self.declared)}"
        elif call.name not in self.impls:
            call.error = f"tool '{call.name}' has no implementation in this task"
        else:
            spec = self.declared.get(call.name, {}).get("parameters", {})
            missing = [r for r in spec.get("required", []) if r not in call.arguments]
            unknown = [k for k in call.arguments if spec.get("properties") and k not in spec["properties"]]
            if missing or unknown:
                call.error = (f"bad arguments for '{call.name}': "
                              + (f"missing {missing} " if missing else "")
                              + (f"unknown {unknown}" if unknown else "")).strip()
            else:
                fn = self.impls[call.name]
                try:
                    sig = inspect.signature(fn)
                    sig.bind(**call.arguments)
                    result = fn(**call.arguments)
                    call.observation = result if isinstance(result, str) else json.dumps(result, default=str)
                except TypeError as e:
                    call.error = f"bad arguments for '{call.name}': {e}"
                except Exception as e:  # a tool that raises is an observation, not a crash
                    call.error = f"tool '{call.name}' failed: {type(e).__name__}: {e}"
        if call.error:
            call.observation = f"ERROR: {call.error}"
        if len(call.observation) > MAX_OBSERVATION_CHARS:
            call.observation = call.observation[:MAX_OBSERVATION_CHARS] + "\n...[truncated]"
        return call
