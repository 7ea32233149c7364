"""Tasks: examples by split, plus a scorer that returns a reward and feedback text.

Built-in offline task families (generated from a seed, nothing downloaded):

    math     multi-step arithmetic word problems            levels 1-4
    codeio   predict what a small Python program prints    levels 1-4
    physics  kinematics and energy problems with units      levels 1-4
    hover    multi-hop claim verification with ``search``   levels 1-3 (= hops)
    jsonl    your own data: ``get_task("jsonl", path="my.jsonl", scorer="exact")``

    >>> from fst_lab.tasks import get_task
    >>> task = get_task("math", level=1, seed=0)
    >>> task.examples("val", 2)

See ``docs/TASKS.md`` for each family and for writing your own task.
"""

from fst_lab.tasks.base import (SPLITS, Example, Score, Task, extract_answer, get_task, parse_number,
                                register_task, task_names)
from fst_lab.tasks.codeio import CodeIOTask
from fst_lab.tasks.hover import HoverTask
from fst_lab.tasks.math import MathTask
from fst_lab.tasks.physics import PhysicsTask
from fst_lab.tasks.user import DatasetTask, JsonlTask, UserTask

__all__ = ["SPLITS", "Example", "Score", "Task", "extract_answer", "parse_number", "register_task", "get_task",
           "task_names", "MathTask", "CodeIOTask", "PhysicsTask", "HoverTask", "UserTask", "JsonlTask",
           "DatasetTask"]
