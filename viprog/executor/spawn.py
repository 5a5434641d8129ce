"""Starting sandbox workers: the fork server, a clean environment, no `__main__`.

Why a fork server: the parent may hold torch, CUDA and threads (the server thread,
models' thread pools): `fork` from such a process can deadlock on locks held by other
threads and duplicates the parent's memory; `spawn` re-imports per worker (slow, and it
runs the user's `__main__`). The fork server is a small clean process that imports only
the worker module and forks workers in milliseconds, so replacing a killed worker, or
starting one for a single program that must run alone, is cheap.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import forkserver, spawn
from typing import Any

from viprog.executor.worker import worker_main


@dataclass
class WorkerHandle:
    """The parent's side of one worker process."""

    proc: Any
    conn: Any
    shared: Any  # RawArray('d', 2): [running job key or -1, its deadline (time.monotonic)]
    solo: bool = False  # started for one program that runs alone (after a worker died)
    keys: set[int] = field(default_factory=set)  # jobs it runs for the parent
    cancelled: set[int] = field(default_factory=set)  # jobs already failed by the parent, still running there


def start_forkserver(ctx: Any) -> None:
    """Start the fork server (once per process) with an empty environment, so that the
    parent's environment variables (tokens, keys) are not in any worker's memory."""
    ctx.set_forkserver_preload(["viprog.executor.worker"])
    saved = dict(os.environ)
    os.environ.clear()
    try:
        forkserver.ensure_running()
    finally:
        os.environ.update(saved)


@contextmanager
def without_main() -> Iterator[None]:
    """Start processes that do not re-import the parent's `__main__`: a worker must not
    run the user's script (its heavy imports, or its unguarded top-level code)."""
    original = spawn.get_preparation_data

    def preparation(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation
    try:
        yield
    finally:
        spawn.get_preparation_data = original


def start_worker(ctx: Any, settings: dict[str, Any], solo: bool = False) -> WorkerHandle:
    parent, child = ctx.Pipe(duplex=True)
    shared = ctx.RawArray("d", [-1.0, 0.0])
    proc = ctx.Process(target=worker_main, args=(child, shared, {**settings, "slots": 1} if solo else settings),
                       daemon=True, name="viprog-sandbox")
    with without_main():
        proc.start()
    child.close()
    return WorkerHandle(proc, parent, shared, solo)


def death(code: int | None) -> str:
    """How a worker's exit code reads: 'SIGSEGV', 'exit code 70', ..."""
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
