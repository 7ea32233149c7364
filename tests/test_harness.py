"""Harness files: load/save round trips, GEPA candidate mapping, lineage, and bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from fst_lab.harness import Harness, HarnessError, few_shot_from_text, load_dir

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted((REPO / "harnesses").glob("*.yaml"))


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_seed_harness_load_save_load_identical(path, tmp_path):
    h = Harness.load(path)
    out = h.save(tmp_path / path.name)
    h2 = Harness.load(out)
    assert h2 == h
    assert h2.dumps() == h.dumps()  # a second save is byte-identical
    assert h.lineage.id == h.content_id() and len(h.id) == 12


def test_at_least_three_harnesses_one_with_tools():
    hs = load_dir(REPO / "harnesses")
    assert {"math", "codeio", "physics", "hover"} <= set(hs)
    assert hs["hover"].tool_names == ["search"]


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_candidate_round_trip_is_lossless(path):
    h = Harness.load(path)
    cand = h.to_candidate()
    assert set(cand) == set(h.evolvable)
    assert all(isinstance(v, str) for v in cand.values())
    assert h.from_candidate(cand) is h  # unchanged candidate -> same harness
    # change every component, map back, and read the same texts out again
    changed = {k: v + ("\n" if k != "few_shot" else "") for k, v in cand.items()}
    if "few_shot" in changed:
        changed["few_shot"] = yaml.safe_dump([[{"role": "user", "content": "Q: 1+1?"},
                                               {"role": "assistant", "content": "Answer: 2"}]])
    if "task_template" in changed:
        changed["task_template"] = "Solve:\n" + cand["task_template"]
    h2 = h.from_candidate(changed, origin="gepa", round=3)
    assert h2.to_candidate() == {k: h2.component(k) for k in changed}
    assert few_shot_from_text(h2.to_candidate().get("few_shot", "[]")) == list(h2.few_shot)
    assert h2.lineage.parents == (h.id,) and h2.lineage.origin == "gepa" and h2.lineage.round == 3
    assert h2.id != h.id
    # and it survives a save/load
    assert Harness.from_dict(yaml.safe_load(h2.dumps())) == h2


def test_tool_description_component_is_evolvable():
    h = Harness.load(REPO / "harnesses/hover.yaml")
    cand = h.to_candidate()
    assert "tool_description_search" in cand
    h2 = h.from_candidate({**cand, "tool_description_search": "Find facts about an entity by name."})
    assert h2.tools[0]["function"]["description"] == "Find facts about an entity by name."
    assert h.tools[0]["function"]["description"] != h2.tools[0]["function"]["description"]  # not mutated


def test_render_messages_and_tools():
    h = Harness.load(REPO / "harnesses/hover.yaml")
    h = h.with_components({"few_shot": yaml.safe_dump([[{"role": "user", "content": "Claim: X"},
                                                        {"role": "assistant", "content": "Answer: SUPPORTED"}]])},
                          origin="manual")
    msgs, tools = h.render({"question": "Ann lives in Bo."})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "Claim: Ann lives in Bo.\n"
    assert tools[0]["function"]["name"] == "search"
    with pytest.raises(HarnessError, match="lacks inputs"):
        h.render({"claim": "x"})


def test_multiline_strings_are_block_style(tmp_path):
    h = Harness.load(REPO / "harnesses/math.yaml")
    text = h.dumps()
    assert "system_prompt: |" in text
    assert text.startswith("# yaml-language-server: $schema=")


def test_diff_is_line_level():
    h = Harness.load(REPO / "harnesses/math.yaml")
    h2 = h.with_components({"system_prompt": h.system_prompt + "Double-check the arithmetic.\n"}, origin="manual")
    d = h.diff(h2)
    assert "+  Double-check the arithmetic." in d
    assert d.count("\n+") >= 1 and "-  Double" not in d


GOOD = (REPO / "harnesses/hover.yaml").read_text()


def _mut(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BAD_CASES = {
    "bad_yaml_indent": (_mut("  function:\n    name: search", "  function:\n   name: search\n  bad"), "invalid YAML", True),
    "unclosed_quote": (_mut('answer_format: "The final', 'answer_format: "The final\n  x: "y'), "invalid YAML", True),
    "unknown_key": (_mut("task: hover\n", "task: hover\ntemprature: 0.3\n"), "unknown key", True),
    "wrong_type_max_turns": (_mut("max_turns: 3", "max_turns: three"), "loop.max_turns", True),
    "missing_system_prompt": (GOOD.split("system_prompt: |")[0] + "task_template: |" + GOOD.split("task_template: |")[1],
                              "system_prompt", False),
    "missing_placeholder": (_mut("Claim: {question}", "Claim: (none)"), "missing placeholder {question}", True),
    "undeclared_placeholder": (_mut("Claim: {question}", "Claim: {question} {context}"), "{context}", True),
    "bad_template_braces": (_mut("Claim: {question}", "Claim: {question"), "task_template", True),
    "tool_bad_type": (_mut("- type: function", "- type: plugin"), "tools.0.type", True),
    "tool_missing_parameters": (_mut("      type: object\n      properties:", "      typ: object\n      properties:"),
                                "tools.0.function.parameters", True),
    "tool_required_not_in_properties": (_mut("required: [query]", "required: [q]"), "required parameter 'q'", True),
    "duplicate_tool_name": (GOOD.replace("loop:", GOOD[GOOD.index("- type: function"):GOOD.index("loop:")] + "loop:", 1)
                            .replace("tools:\n", "tools:\n", 1), "duplicate tool name 'search'", True),
    "bad_schema_version": (_mut("schema_version: 1", "schema_version: 2"), "schema_version", True),
    "evolvable_unknown_tool": (_mut("tool_description_search]", "tool_description_lookup]"), "names no tool", True),
    "bad_name": (_mut("name: hover\n", "name: hover harness!\n"), "name", True),
    "top_level_list": ("- a\n- b\n", "top level must be a mapping", True),
    "unknown_loop_key": (_mut("max_turns: 3", "max_turns: 3\n  temprature: 0.3"),
                         "field 'loop.temprature': unknown key; did you mean temperature?", True),
    "evolvable_not_a_component": (_mut("tool_description_search]", "tool_description_search, tools]"),
                                  "'tools' is not an evolvable component", True),
    "duplicate_key": (_mut("name: hover\n", "name: hover\nname: hover2\n"), "duplicate key 'name' (first on line",
                      True),
    "duplicate_nested_key": (_mut("max_turns: 3", "max_turns: 3\n  max_turns: 4"), "duplicate key 'max_turns'", True),
    "tool_missing_description": (_mut("    description: Look up an entity in the encyclopedia and return the facts "
                                      "known about it.\n", ""),
                                 "field 'tools.0.function': missing required key 'description'", True),
}

# the text on the line an error names: the offending key itself, not the mapping that holds it
ON_LINE = {"unknown_key": "temprature:", "unknown_loop_key": "temprature:", "duplicate_key": "name: hover2",
           "duplicate_nested_key": "max_turns: 4", "evolvable_not_a_component": "evolvable:",
           "bad_name": "name: hover harness!", "wrong_type_max_turns": "max_turns: three"}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_harness_files_get_one_clear_error(case, tmp_path):
    text, expect, has_line = BAD_CASES[case]
    p = tmp_path / f"{case}.yaml"
    p.write_text(text)
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    listing = sorted(x.name for x in tmp_path.iterdir())
    with pytest.raises(HarnessError) as ei:
        Harness.load(p)
    msg = str(ei.value)
    assert str(p) in msg, msg  # names the file
    assert expect in msg, msg  # names the field / problem
    if has_line:
        assert ei.value.line is not None and f"{p}:{ei.value.line}" in msg
        # the line points at the offending text
        lines = text.splitlines()
        assert 1 <= ei.value.line <= len(lines)
        if case in ON_LINE:
            assert ON_LINE[case] in lines[ei.value.line - 1], (lines[ei.value.line - 1], msg)
    # nothing on disk touched
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == listing


def test_error_line_points_at_bad_field(tmp_path):
    text = _mut("max_turns: 3", "max_turns: three")
    p = tmp_path / "h.yaml"
    p.write_text(text)
    with pytest.raises(HarnessError) as ei:
        Harness.load(p)
    assert "max_turns" in text.splitlines()[ei.value.line - 1]


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(HarnessError, match="nope.yaml: file not found"):
        Harness.load(tmp_path / "nope.yaml")


def test_invalid_candidate_is_rejected_without_side_effects():
    h = Harness.load(REPO / "harnesses/math.yaml")
    with pytest.raises(HarnessError, match="few_shot"):
        h.from_candidate({**h.to_candidate(), "few_shot": "{not: [a list"})
    with pytest.raises(HarnessError, match="missing placeholder"):
        h.from_candidate({**h.to_candidate(), "task_template": "no placeholder here"})
    assert Harness.load(REPO / "harnesses/math.yaml") == h


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    h = Harness.load(REPO / "harnesses/math.yaml")
    p = h.save(tmp_path / "math.yaml")
    before = p.read_text()
    h2 = h.with_components({"system_prompt": "changed\n"}, origin="manual")
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        h2.save(p)
    assert p.read_text() == before
    assert [x.name for x in tmp_path.iterdir()] == ["math.yaml"]  # no temp file left behind
