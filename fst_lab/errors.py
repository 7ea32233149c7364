"""The one error family of fst_lab: every error a user can cause derives from :class:`FstLabError`.

A person meets these at the edges — a config file, a JSONL task file, a harness YAML, a run directory,
the reflection LM — so each message is one line that names the culprit: the file, and the line and
field where there is one (``c.yaml:7: fast.budget_pases: unknown key; did you mean budget_passes?``).
The command line prints them as ``fst-lab: error: <message>`` with exit code 2 and keeps tracebacks for
real bugs (docs/ERRORS.md); the app and the dashboard show the same line.

The classes live beside the code that raises them (``HarnessError`` in harness.py, ``TaskDataError`` in
tasks/user.py, ``RunDirError`` in runs.py, ``SessionError`` in session.py, ``ModelNotFoundError`` in
models.py, ``ReflectionError`` in lm.py, ``ConsolidationError`` in consolidate.py, ``UsageError`` in
cli.py); ``ConfigError`` lives here because config.py and loop_configs.py both raise it (import it from
``fst_lab.config``). Each keeps its older base too (``ValueError``, ``RuntimeError``,
``FileNotFoundError``), so callers that caught those still do::

    >>> from fst_lab.errors import FstLabError
    >>> from fst_lab.config import ConfigError, FSTConfig
    >>> try:
    ...     FSTConfig.from_dict({"fast": {"budget_pases": 2}})
    ... except FstLabError as e:
    ...     print(e)
    fast.budget_pases: unknown key; did you mean budget_passes?
"""

from __future__ import annotations

import re


class FstLabError(Exception):
    """Base of every fst_lab error caused by input (config, harness, task data, run directory, session,
    tool/sandbox, reflection LM, model lookup). ``str(err)`` is one line naming file:line and field."""


class ConfigError(FstLabError, ValueError):
    """The run config is invalid. ``str(e)`` is ``[file[:line]: ][field.path: ]message`` on one line.

    ``path`` is the field (``fast.budget_passes``, ``stages[1].task``); ``source``/``line`` say where it
    came from when the config was loaded from a file.
    """

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None,
                 line: int | None = None):
        self.message, self.path, self.source, self.line = message, path, source, line
        where = f"{source}:{line}" if source and line else (source or "")
        super().__init__(": ".join(p for p in (where, path, message) if p))

    def located(self, source: str | None, lines: dict[str, int] | None = None) -> "ConfigError":
        """The same error, placed in ``source`` at the line of its field (or the nearest enclosing one)."""
        if self.source is not None or source is None:
            return self
        line, path = None, self.path
        while path and lines and line is None:
            line = lines.get(path)
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else None
        return ConfigError(self.message, path=self.path, source=source, line=line)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ' | '), as the CLI prints it."""
    text = str(err).strip() or type(err).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines)
