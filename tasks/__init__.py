"""viprog.tasks: one module per task (data + reward), registered in `TASKS`.

Importing this package registers the built-in tasks; it reads no file.
"""

from viprog.tasks import gqa, jsonl, refcoco, shapes, sugarcrepe  # noqa: F401  (register the built-ins)
from viprog.tasks.base import TASKS, DataError, Example, Task

__all__ = ["TASKS", "DataError", "Example", "Task"]
