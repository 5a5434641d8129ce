"""What the Executor is given (`Job`) and what it keeps about each job while it runs (`State`).

Kept apart from the pool's loop so the loop module stays readable; nothing here runs code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from viprog.executor.spawn import WorkerHandle


@dataclass(frozen=True)
class Job:
    """One program to run on one image."""

    program: str  # source defining execute_command(image) (or execute_command(image, query))
    image_id: str  # cache key for pixels; jobs on the same image share it
    image: str | Path | np.ndarray | Callable[[], np.ndarray]  # loaded lazily by the server, once per image_id
    query: str | None = None  # passed as 2nd arg when execute_command takes two parameters
    meta: Mapping[str, Any] | None = None  # annotations for the scene-graph profile (Example.meta)


@dataclass
class State:
    """A job in a run: where it runs, what it asked for, what it has used."""

    index: int
    job: Job
    key: int = -1
    image: list[Any] = field(default_factory=list)  # [id, width, height] once acquired
    trace: list[dict[str, Any]] = field(default_factory=list)
    trace_bytes: int = 0
    call: dict[str, Any] | None = None  # the call waiting for its reply
    call_since: float = 0.0  # time.monotonic() when that call arrived
    used: float = 0.0  # seconds computed, as the worker reported with its last call
    waited: float = 0.0  # seconds waited for primitive results (answered calls)
    started: float = 0.0
    requeues: int = 0  # runs lost to a worker that was killed for another job
    alone: bool = False  # runs in a worker of its own (its shared worker died)
    size: int = 0  # bytes of its result as it came from the worker
    worker: WorkerHandle | None = None
