"""Harness: the fast weights of FST.

A harness is everything around the policy that GEPA may rewrite: system prompt, task template,
few-shot conversations, tool specs (OpenAI function-calling format) and loop settings. It lives in
one hand-editable YAML file (``harnesses/*.yaml``), validated against ``schemas/harness.schema.json``.

    >>> h = Harness.load("harnesses/math.yaml")
    >>> messages, tools = h.render({"question": "What is 2+3?"})
    >>> cand = h.to_candidate()              # GEPA's dict[str, str]
    >>> h2 = h.from_candidate(cand, origin="gepa", round=1)

Harnesses are immutable: every change (GEPA proposal, bootstrap, hand edit) is a new harness with
a new content-hash id and its parents recorded in ``lineage``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import string
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from fst_lab import yamltext
from fst_lab.errors import FstLabError

SCHEMA_VERSION = 1
ORIGINS = ("seed", "gepa", "bootstrap", "manual", "merge")
TOOL_DESC_PREFIX = "tool_description_"
YAML_MODELINE = "# yaml-language-server: $schema=../fst_lab/schemas/harness.schema.json\n"


class HarnessError(FstLabError, ValueError):
    """A harness file or candidate is invalid. The message names the file, field path and line."""

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None,
                 line: int | None = None):
        self.source, self.field_path, self.line, self.reason = source, path, line, message
        where = []
        if source:
            where.append(str(source) + (f":{line}" if line else ""))
        elif line:
            where.append(f"line {line}")
        if path:
            where.append(f"field '{path}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class LoopSettings:
    """How the agent loop runs this harness."""

    max_turns: int = 1  # model turns; >1 lets tool calls and observations go back and forth
    max_new_tokens: int = 128  # per model turn
    temperature: float = 1.0  # sampling temperature for rollouts (0 = greedy)
    answer_format: str = "The final line is 'Answer: <answer>'."  # shown to GEPA, used by scorers


@dataclass(frozen=True)
class Lineage:
    """Where a harness came from: content-hash id, parent ids, origin and fast-loop round."""

    id: str = ""
    parents: tuple[str, ...] = ()
    origin: str = "seed"
    round: int = 0
    note: str = ""


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("fst_lab").joinpath("schemas/harness.schema.json").read_text())


def _placeholders(template: str) -> list[str]:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:  # unbalanced braces
        raise HarnessError(f"bad template syntax: {e}", path="task_template") from None
    for _, f, spec, conv in parts:
        if f is not None and (spec or conv):
            raise HarnessError(f"placeholder {{{f}}} may not carry a format spec or conversion "
                               f"(got spec {spec!r}, conversion {conv!r}); write plain {{{f}}}", path="task_template")
    return [f for _, f, _, _ in parts if f is not None]


@dataclass(frozen=True)
class Harness:
    """One agent harness. Build with :meth:`load`, :meth:`from_dict` or :meth:`replace`."""

    name: str
    system_prompt: str
    task_template: str
    description: str = ""
    task: str = ""
    inputs: tuple[str, ...] = ("question",)
    few_shot: tuple = ()  # tuple of conversations, each a list of chat messages
    tools: tuple = ()  # OpenAI function specs
    loop: LoopSettings = field(default_factory=LoopSettings)
    evolvable: tuple[str, ...] = ("system_prompt", "task_template", "few_shot")
    lineage: Lineage = field(default_factory=Lineage)
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ construction & validation
    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None, _yaml_text: str | None = None) -> "Harness":
        """Validate a parsed YAML/JSON mapping and build a harness (errors name field and line)."""
        import jsonschema

        if not isinstance(data, dict):
            raise HarnessError(f"top level must be a mapping, got {type(data).__name__}", source=source, line=1)
        validator = jsonschema.Draft202012Validator(schema())
        errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
        if errors:
            err = errors[0]
            where, msg = _schema_message(err)
            line = _line_of(_yaml_text, where) if _yaml_text else None
            raise HarnessError(msg, source=source, path=".".join(map(str, where)) or None, line=line)

        def fail(msg: str, fpath: list) -> None:
            line = _line_of(_yaml_text, fpath) if _yaml_text else None
            raise HarnessError(msg, source=source, path=".".join(map(str, fpath)), line=line)

        inputs = tuple(data.get("inputs", ("question",)))
        try:
            used = _placeholders(data["task_template"])
        except HarnessError as e:
            fail(e.reason, ["task_template"])
        for name in used:
            if name == "" or not name.isidentifier():
                fail(f"placeholder {{{name}}} is not a plain name (positional/attribute access not allowed)",
                     ["task_template"])
            if name not in inputs:
                fail(f"placeholder {{{name}}} is not declared in inputs {list(inputs)}", ["task_template"])
        for name in inputs:
            if name not in used:
                fail(f"missing placeholder {{{name}}} (declared in inputs)", ["task_template"])
        names = [t["function"]["name"] for t in data.get("tools", [])]
        for i, n in enumerate(names):
            if n in names[:i]:
                fail(f"duplicate tool name '{n}'", ["tools", i, "function", "name"])
        for i, t in enumerate(data.get("tools", [])):
            params = t["function"]["parameters"]
            for j, req in enumerate(params.get("required", [])):
                if req not in params.get("properties", {}):
                    fail(f"required parameter '{req}' is not in properties", ["tools", i, "function", "parameters",
                                                                              "required", j])
        for i, comp in enumerate(data.get("evolvable", [])):
            if comp.startswith(TOOL_DESC_PREFIX) and comp[len(TOOL_DESC_PREFIX):] not in names:
                fail(f"evolvable component '{comp}' names no tool of this harness", ["evolvable", i])
        lin = data.get("lineage", {})
        h = cls(
            name=data["name"],
            description=data.get("description", ""),
            task=data.get("task", ""),
            inputs=inputs,
            system_prompt=data["system_prompt"],
            task_template=data["task_template"],
            few_shot=tuple(copy.deepcopy(data.get("few_shot", []))),
            tools=tuple(copy.deepcopy(data.get("tools", []))),
            loop=LoopSettings(**data.get("loop", {})),
            evolvable=tuple(data.get("evolvable", ("system_prompt", "task_template", "few_shot"))),
            lineage=Lineage(id=lin.get("id", ""), parents=tuple(lin.get("parents", ())),
                            origin=lin.get("origin", "seed"), round=int(lin.get("round", 0)),
                            note=lin.get("note", "")),
        )
        # The id is always the content hash: a stale or hand-typed id is corrected, not trusted.
        return dataclasses.replace(h, lineage=dataclasses.replace(h.lineage, id=h.content_id()))

    @classmethod
    def loads(cls, text: str, *, source: str | None = None) -> "Harness":
        try:
            # Anchors/aliases are refused: a tiny file could otherwise expand into gigabytes ("billion laughs").
            for ev in yaml.parse(text, Loader=yaml.SafeLoader):
                if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                    raise HarnessError("YAML anchors/aliases are not allowed in harness files", source=source,
                                       line=ev.start_mark.line + 1)
            data = yamltext.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            raise HarnessError(f"invalid YAML: {e.problem or e}", source=source, line=line) from None
        except yaml.YAMLError as e:
            raise HarnessError(f"invalid YAML: {e}", source=source) from None
        return cls.from_dict(data, source=source, _yaml_text=text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Harness":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise HarnessError("file not found", source=str(path)) from None
        except UnicodeDecodeError as e:
            raise HarnessError(f"not UTF-8 text: {e}", source=str(path)) from None
        return cls.loads(text, source=str(path))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self, *, with_lineage: bool = True) -> dict:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "description": self.description,
        }
        if self.task:
            d["task"] = self.task
        d["inputs"] = list(self.inputs)
        d["system_prompt"] = self.system_prompt
        d["task_template"] = self.task_template
        d["few_shot"] = copy.deepcopy(list(self.few_shot))
        d["tools"] = copy.deepcopy(list(self.tools))
        d["loop"] = dataclasses.asdict(self.loop)
        d["evolvable"] = list(self.evolvable)
        if with_lineage:
            lin = dataclasses.asdict(self.lineage)
            lin["parents"] = list(self.lineage.parents)
            d["lineage"] = lin
        return d

    def dumps(self) -> str:
        return YAML_MODELINE + yaml.dump(self.to_dict(), Dumper=_BlockDumper, sort_keys=False,
                                         allow_unicode=True, width=100)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a crash never leaves a half-written harness."""
        path = Path(path)
        atomic_write_text(path, self.dumps())
        return path

    def content_id(self) -> str:
        """Stable hash of everything but lineage: equal content, equal id."""
        blob = json.dumps(self.to_dict(with_lineage=False), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        return self.lineage.id or self.content_id()

    # ------------------------------------------------------------------ rendering
    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def render_user(self, inputs: dict) -> str:
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise HarnessError(f"example lacks inputs {missing} needed by the template", path="task_template")
        return self.task_template.format(**{k: inputs[k] for k in self.inputs})

    def render(self, inputs: dict | None = None, *, with_system: bool = True) -> tuple[list[dict], list[dict] | None]:
        """Example inputs -> (chat messages, tools or None). Few-shot turns precede the task."""
        messages: list[dict] = []
        if with_system and self.system_prompt.strip():
            messages.append({"role": "system", "content": self.system_prompt})
        for conv in self.few_shot:
            messages.extend(copy.deepcopy(conv))
        if inputs is not None:
            messages.append({"role": "user", "content": self.render_user(inputs)})
        return messages, (copy.deepcopy(list(self.tools)) or None)

    # ------------------------------------------------------------------ GEPA candidate mapping
    def to_candidate(self) -> dict[str, str]:
        """The evolvable components as GEPA's ``dict[str, str]`` (stable keys, lossless)."""
        cand: dict[str, str] = {}
        for comp in self.evolvable:
            cand[comp] = self.component(comp)
        return cand

    def component(self, comp: str) -> str:
        if comp == "system_prompt":
            return self.system_prompt
        if comp == "task_template":
            return self.task_template
        if comp == "few_shot":
            return few_shot_to_text(self.few_shot)
        if comp.startswith(TOOL_DESC_PREFIX):
            name = comp[len(TOOL_DESC_PREFIX):]
            for t in self.tools:
                if t["function"]["name"] == name:
                    return t["function"]["description"]
        raise HarnessError(f"unknown component '{comp}'", path=comp)

    def components(self) -> list[str]:
        """Every component that could be evolved (whether or not listed in ``evolvable``)."""
        return ["system_prompt", "task_template", "few_shot"] + [TOOL_DESC_PREFIX + n for n in self.tool_names]

    def with_components(self, updates: dict[str, str], *, origin: str, round: int | None = None,
                        parents: Iterable[str] | None = None, note: str = "") -> "Harness":
        """A new harness with some components replaced (validated; lineage points back here)."""
        data = self.to_dict(with_lineage=False)
        for comp, text in updates.items():
            if not isinstance(text, str):
                raise HarnessError(f"component must be text, got {type(text).__name__}", path=comp)
            if comp in ("system_prompt", "task_template"):
                data[comp] = text
            elif comp == "few_shot":
                data["few_shot"] = few_shot_from_text(text)
            elif comp.startswith(TOOL_DESC_PREFIX):
                name = comp[len(TOOL_DESC_PREFIX):]
                tools = [t for t in data["tools"] if t["function"]["name"] == name]
                if not tools:
                    raise HarnessError(f"no tool named '{name}'", path=comp)
                tools[0]["function"]["description"] = text
            else:
                raise HarnessError(f"unknown component '{comp}'", path=comp)
        data["lineage"] = {
            "parents": list(parents) if parents is not None else [self.id],
            "origin": origin,
            "round": self.lineage.round if round is None else round,
            "note": note,
        }
        return Harness.from_dict(data, source=f"<{origin} candidate>")

    def from_candidate(self, candidate: dict[str, str], *, origin: str = "gepa", round: int | None = None,
                       parents: Iterable[str] | None = None) -> "Harness":
        changed = {k: v for k, v in candidate.items() if k not in self.to_candidate() or self.component(k) != v}
        if not changed:
            return self
        return self.with_components(changed, origin=origin, round=round, parents=parents)

    def replace(self, **kw) -> "Harness":
        """dataclasses.replace + revalidation + fresh content id."""
        h = dataclasses.replace(self, **kw)
        return Harness.from_dict(h.to_dict(), source="<replace>")

    def diff(self, other: "Harness") -> str:
        """Line-level unified diff of the YAML files (lineage excluded)."""
        a = yaml.dump(self.to_dict(with_lineage=False), Dumper=_BlockDumper, sort_keys=False, width=100)
        b = yaml.dump(other.to_dict(with_lineage=False), Dumper=_BlockDumper, sort_keys=False, width=100)
        return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True),
                                            fromfile=f"{self.name}@{self.id}", tofile=f"{other.name}@{other.id}"))


# ---------------------------------------------------------------------- helpers
def few_shot_to_text(few_shot: Iterable) -> str:
    """Few-shot conversations as readable YAML (what the reflection LM sees and rewrites)."""
    convs = [list(c) for c in few_shot]
    if not convs:
        return "[]\n"
    return yaml.dump(convs, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)


def few_shot_from_text(text: str) -> list:
    try:
        data = yamltext.safe_load(text) if text.strip() else []
    except yaml.YAMLError as e:
        raise HarnessError(f"few_shot is not valid YAML: {e}", path="few_shot") from None
    if data is None:
        data = []
    if not isinstance(data, list) or not all(isinstance(c, list) for c in data):
        raise HarnessError("few_shot must be a list of conversations (lists of {role, content})", path="few_shot")
    return data


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    if style and any(line != line.rstrip() for line in value.splitlines()):
        style = None  # trailing spaces can't round-trip through a block scalar; quote instead
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


# What the schema's patterns mean, in words (jsonschema would print the regular expression).
_PATTERN_WORDS = {
    "^[A-Za-z0-9_.-]+$": "may use only letters, digits, '_', '.' and '-'",
    "^[A-Za-z_][A-Za-z0-9_]*$": "must be a plain name (letters, digits and '_', not starting with a digit)",
}


def _schema_message(err) -> tuple[list, str]:
    """Where a schema violation is (the key path, down to an unknown key itself) and what it is, in words."""
    where = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in known]
        if extra:
            close = difflib.get_close_matches(str(extra[0]), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f" (known keys: {', '.join(known)})"
            return where + [extra[0]], f"unknown key{hint}"
    if err.validator == "required":  # jsonschema: "'x' is a required property"
        missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
        if missing:
            return where, f"missing required key '{missing[0]}'"
    if err.validator == "pattern":
        if where and where[0] == "evolvable":
            return where, (f"{err.instance!r} is not an evolvable component (system_prompt, task_template, few_shot "
                           f"or tool_description_<tool name>)")
        if err.validator_value in _PATTERN_WORDS:
            return where, f"{err.instance!r} {_PATTERN_WORDS[err.validator_value]}"
    return where, err.message


def _line_of(text: str | None, path: list) -> int | None:
    """1-based line of the YAML node at ``path`` (or its deepest existing ancestor)."""
    if not text:
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt = v if not isinstance(v, yaml.ScalarNode) else v
                    line = k.start_mark.line + 1
                    break
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_dir(directory: str | os.PathLike) -> dict[str, Harness]:
    """All ``*.yaml`` harnesses in a directory, by name."""
    out = {}
    for p in sorted(Path(directory).glob("*.yaml")):
        h = Harness.load(p)
        out[h.name] = h
    return out


def default_harness_dir() -> Path:
    """``harnesses/`` of the checkout (or ``FST_LAB_HARNESSES``)."""
    env = os.environ.get("FST_LAB_HARNESSES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "harnesses"


def load_named(name: str) -> Harness:
    """A harness by file stem from the harness dir, or by path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return Harness.load(p)
    cand = default_harness_dir() / f"{name}.yaml"
    if not cand.exists():
        avail = sorted(x.stem for x in default_harness_dir().glob("*.yaml"))
        raise HarnessError(f"no harness named '{name}' (available: {avail})", source=str(cand))
    return Harness.load(cand)
