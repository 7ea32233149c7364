"""YAML that people write by hand (configs, harnesses, the app's config box): ``yaml.safe_load``, except that a
key repeated in one mapping is an error naming both lines instead of the last one silently winning.

A duplicated ``system_prompt:`` in a harness edited mid-run, or a second ``cycles:`` further down a config,
would otherwise leave the edit a person made in one place ignored without a word::

    >>> from fst_lab.yamltext import safe_load
    >>> safe_load("cycles: 2\\nmode: fst\\ncycles: 3\\n")
    Traceback (most recent call last):
    ...
    yaml.constructor.ConstructorError: duplicate key 'cycles' (first on line 1)
      in "<unicode string>", line 3, column 1:
        cycles: 3
        ^
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # complex keys and merge keys: left to SafeLoader
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConstructorError(None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                                           key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a key given twice in one mapping (a :class:`yaml.MarkedYAMLError`
    at the second occurrence, so callers that report YAML errors by line report this one the same way)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
