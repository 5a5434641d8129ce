"""`Executor`: runs untrusted programs in sandbox worker processes, thousands at a time.

What is isolated. Each program is compiled under the restricted policy of
`viprog.executor.restrict` (no imports beyond `math`, no `_` names or attributes, no
frame/code/generator internals, no open/exec/eval, guarded getattr and str.format,
writes only to its own objects) and runs in a worker process that holds no model, no
pixels, no environment variables and cannot write files (`RLIMIT_FSIZE` 0), under an
address-space limit, a CPU-time limit and a recursion limit. The parent enforces each
program's wall-clock timeout (the time it computes, not the time it waits for primitives)
by killing the worker; a worker that dies, hangs or runs out of memory is replaced and
the programs that were waiting in it are run again, so the parent and the other
programs go on. Only JSON crosses back: answers, primitive requests, error lines.

What is not isolated. There is no kernel sandbox (seccomp, namespaces): the protection is
the restricted language plus the capabilities the namespace hands out, and a flaw in
RestrictedPython or in CPython could let a program reach the worker's interpreter
(which then still has no secrets, no models and no write access to files, but can read
what the worker's user can read and open sockets). A program may use its whole CPU and
memory budget, and it shares its worker's `memory_mb` with the other programs waiting in
that worker. Primitive results are computed in the parent by the profile, outside the
sandbox. Programs in the same worker share nothing they can write.

Start method: `forkserver`. The parent may hold torch, CUDA and threads (the server
thread, models' thread pools): `fork` from such a process can deadlock on locks held by
other threads and duplicates the parent's memory; `spawn` re-imports per worker (slow,
and it runs the user's `__main__`). The fork server is a small clean process that imports
only the worker module and forks workers in milliseconds, so replacing a killed worker
is cheap.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Self

import numpy as np

from viprog.errors import DataError
from viprog.executor.result import ExecutionResult
from viprog.executor.server import PrimitiveServer
from viprog.primitives.profile import Profile, get_profile
from viprog.primitives.spec import all_specs

_POLL = 0.05  # seconds between watchdog checks
_GRACE = 0.2  # seconds past a program's deadline before its worker is killed


def _start_forkserver(ctx: Any) -> None:
    """Start the fork server (once per process) with an empty environment, so that the
    parent's environment variables (tokens, keys) are not in any worker's memory."""
    from multiprocessing import forkserver

    ctx.set_forkserver_preload(["viprog.executor.worker"])
    saved = dict(os.environ)
    os.environ.clear()
    try:
        forkserver.ensure_running()
    finally:
        os.environ.update(saved)


@contextmanager
def _without_main() -> Iterator[None]:
    """Start processes that do not re-import the parent's `__main__`: a worker must not
    run the user's script (its heavy imports, or its unguarded top-level code)."""
    from multiprocessing import spawn

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


@dataclass(frozen=True)
class Job:
    """One program to run on one image."""

    program: str  # source defining execute_command(image) (or execute_command(image, query))
    image_id: str  # cache key for pixels; jobs on the same image share it
    image: str | Path | np.ndarray | Callable[[], np.ndarray]  # loaded lazily by the server, once per image_id
    query: str | None = None  # passed as 2nd arg when execute_command takes two parameters
    meta: Mapping[str, Any] | None = None  # annotations for the scene-graph profile (Example.meta)


@dataclass
class _State:
    index: int
    job: Job
    key: int = -1
    image: list[Any] = field(default_factory=list)  # [id, width, height] once acquired
    trace: list[dict[str, Any]] = field(default_factory=list)
    call: dict[str, Any] | None = None  # the call waiting for its reply
    started: float = 0.0
    retries: int = 0  # runs lost to a worker that died while this job held the token
    requeues: int = 0  # runs lost to a worker that died or was killed for another job
    worker: _Worker | None = None


@dataclass
class _Worker:
    proc: Any
    conn: Any
    shared: Any  # RawArray('d', 2): [running job key or -1, its deadline (time.monotonic)]
    keys: set[int] = field(default_factory=set)


class Executor:
    """Sandbox workers plus a PrimitiveServer; use as a context manager.

    timeout: seconds of a program's own run time (waiting for primitives excluded).
    memory_mb: address space a worker's programs may use beyond the worker's footprint.
    slots: programs in flight per worker (the more, the fuller the model batches).
    batch_size, batch_wait: a primitive's batch runs when it holds batch_size calls, when
        every program in flight waits for a result, or after batch_wait seconds.
    """

    def __init__(self, profile: str | Profile = "shapes", *, workers: int = 2, timeout: float = 10.0,
                 profile_options: dict[str, Any] | None = None, batch_size: int = 32, batch_wait: float = 0.05,
                 cache: bool = True, max_primitive_calls: int = 1000, memory_mb: int = 1024, slots: int = 64,
                 recursion_limit: int = 200, max_output_bytes: int = 1_000_000, max_argument_bytes: int = 16384,
                 max_retries: int = 1) -> None:
        if workers < 1 or slots < 1 or timeout <= 0:
            raise ValueError("workers and slots must be >= 1 and timeout > 0")
        self.profile = get_profile(profile, **(profile_options or {})) if isinstance(profile, str) else profile
        self.timeout, self.slots, self.max_retries = float(timeout), slots, max_retries
        self.max_message = 2 * max_output_bytes + 65536  # an answer, and a trace of up to the same size
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.server = PrimitiveServer(self.profile, batch_size=batch_size, batch_wait=batch_wait, cache=cache,
                                      on_done=self._wake)
        self.settings = {"specs": [s.to_json() for s in all_specs()], "timeout": self.timeout, "slots": slots,
                         "memory_mb": memory_mb, "recursion_limit": recursion_limit, "stack_kb": 4096,
                         "max_primitive_calls": max_primitive_calls, "max_output_bytes": max_output_bytes,
                         "max_message_bytes": self.max_message - 1024, "cache": cache,
                         "max_argument_bytes": max_argument_bytes}
        self._ctx = mp.get_context("forkserver")
        _start_forkserver(self._ctx)
        self._keys = itertools.count()
        self._states: dict[int, _State] = {}
        self._queue: deque[_State] = deque()
        self._finished: list[tuple[_State, ExecutionResult]] = []
        self._workers = [self._spawn() for _ in range(workers)]

    # -- public API ----------------------------------------------------------------------
    def run(self, job: Job) -> ExecutionResult:
        return self.run_many([job])[0]

    def run_many(self, jobs: Sequence[Job], progress: bool | str = False) -> list[ExecutionResult]:
        """Run every job; results in job order, one `ExecutionResult` each."""
        from tqdm.auto import tqdm

        if not self._workers:
            raise RuntimeError("the Executor is closed")
        results: list[ExecutionResult | None] = [None] * len(jobs)
        self._queue.extend(_State(i, job) for i, job in enumerate(jobs))
        bar = tqdm(total=len(jobs), desc=progress if isinstance(progress, str) else "programs",
                   disable=not progress, unit="prog")
        left = len(jobs)
        try:
            while left:
                self._dispatch()
                self.server.set_running(sum(1 for state in self._states.values() if state.call is None))
                self._step()
                for state, result in self._finished:
                    results[state.index] = result
                left -= len(self._finished)
                bar.update(len(self._finished))
                self._finished.clear()
        except BaseException:
            self._reset()
            raise
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        for w in self._workers:
            w.conn.close()
        for w in self._workers:
            w.proc.join(timeout=1)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        self._workers = []
        self.server.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers -------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        from viprog.executor.worker import worker_main

        parent, child = self._ctx.Pipe(duplex=True)
        shared = self._ctx.RawArray("d", [-1.0, 0.0])
        proc = self._ctx.Process(target=worker_main, args=(child, shared, self.settings), daemon=True,
                                 name="viprog-sandbox")
        with _without_main():
            proc.start()
        child.close()
        return _Worker(proc, parent, shared)

    def _lose(self, w: _Worker, culprit: int | None, kind: str | None, message: str, last: str = "runtime") -> None:
        """Kill and replace `w`; fail its culprit with `kind` (None: retry it, then fail it
        with `last`), rerun the others."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        w.conn.close()
        for key in sorted(w.keys):
            state = self._states.pop(key)
            if key == culprit and kind is not None:
                self._finish(state, ExecutionResult.failure(kind, message))  # type: ignore[arg-type]
                continue
            if key == culprit:
                state.retries += 1
            else:
                state.requeues += 1
            if state.retries > self.max_retries or state.requeues > 8:
                self._finish(state, ExecutionResult.failure(last if kind is None else kind, message))  # type: ignore[arg-type]
            else:
                state.trace, state.call, state.worker = [], None, None
                self._queue.appendleft(state)
        self._workers[self._workers.index(w)] = self._spawn()

    def _died(self, w: _Worker) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        holder = int(w.shared[0]) if w.shared[0] >= 0 else None
        if code == -signal.SIGXCPU:
            self._lose(w, holder, "timeout", f"exceeded its CPU time (timeout {self.timeout:g} s)")
        elif code == -signal.SIGKILL:
            self._lose(w, holder, None, "its worker was killed (SIGKILL; out of memory?) on every attempt", "memory")
        else:
            self._lose(w, holder, None, f"its worker process died (exit code {code}) on every attempt")

    def _reset(self) -> None:
        """After an interruption: fresh workers, no job left behind."""
        for state in [*self._states.values(), *self._queue]:
            if state.image:
                self.server.images.release(state.image[0])
        for w in list(self._workers):
            w.keys.clear()
            self._lose(w, None, None, "interrupted")
        self._states.clear()
        self._queue.clear()
        self._finished.clear()

    # -- the loop ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue:
            w = max(self._workers, key=lambda w: self.slots - len(w.keys))
            free = self.slots - len(w.keys)
            if free <= 0:
                return
            share = max(1, min(free, -(-len(self._queue) // len(self._workers))))
            batch = []
            for _ in range(min(share, len(self._queue))):
                state = self._queue.popleft()
                if not state.image:
                    try:
                        ref = self.server.images.acquire(state.job.image_id, state.job.image, state.job.meta)
                    except Exception as exc:  # noqa: BLE001 — an unreadable image fails its jobs only
                        text = str(exc) if isinstance(exc, DataError) else f"image {state.job.image_id!r}: {exc!r}"
                        self._finished.append((state, ExecutionResult.failure("primitive", text[:400])))
                        continue
                    state.image = [ref.id, ref.width, ref.height]
                state.key = next(self._keys)
                state.worker, state.started = w, time.perf_counter()
                self._states[state.key] = state
                w.keys.add(state.key)
                batch.append([state.key, state.job.program, state.image, state.job.query])
            if batch:
                self._send(w, {"op": "run", "jobs": batch})

    def _send(self, w: _Worker, message: dict[str, Any]) -> None:
        try:
            w.conn.send_bytes(json.dumps(message).encode())
        except OSError:
            self._died(w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _step(self) -> None:
        """Wait for messages, handle them, answer primitive calls, check deadlines."""
        conns = {w.conn: w for w in self._workers}
        sentinels = {w.proc.sentinel: w for w in self._workers}
        ready = wait([*conns, *sentinels, self._wake_r], timeout=_POLL)
        replies: dict[int, list[Any]] = {}
        for obj in ready:
            w = conns.get(obj)
            if w is not None and w in self._workers:
                self._drain(w, replies)
        if self._wake_r in ready:
            os.read(self._wake_r, 65536)
        for pending, ok, value in self.server.completed():
            for key in pending.waiters:
                self._answer(key, ok, value, replies)
        self.server.set_running(sum(1 for state in self._states.values() if state.call is None))
        for w in list(self._workers):
            keys = replies.pop(id(w), None)
            if keys:
                self._send(w, {"op": "reply", "replies": keys})
        for obj in ready:
            w = sentinels.get(obj)
            if w is not None and w in self._workers:
                self._died(w)
        self._watchdog()

    def _drain(self, w: _Worker, replies: dict[int, list[Any]]) -> None:
        while w in self._workers:
            try:
                if not w.conn.poll():
                    return
                self._handle(w, json.loads(w.conn.recv_bytes(self.max_message)), replies)
            except (EOFError, OSError, ValueError, TypeError, KeyError, IndexError):
                self._died(w)  # dead, or sent what our worker code never sends: replace it

    def _handle(self, w: _Worker, message: dict[str, Any], replies: dict[int, list[Any]]) -> None:
        key = message["key"]
        state = self._states.get(key) if key in w.keys else None
        if state is None:
            return
        if message["op"] == "done":
            if "answer" in message:
                result = ExecutionResult(answer=message["answer"])
            else:
                result = ExecutionResult.failure(message["kind"], str(message["error"]))
            if isinstance(message.get("trace"), list):
                state.trace = message["trace"]
            del self._states[key]
            w.keys.discard(key)
            self._finish(state, result)
        elif message["op"] == "call":
            name, patches, args = message["call"]
            state.call = {"primitive": name, "box": patches[0][1:] if patches else None, "args": args}
            if isinstance(patches, list) and len(patches) > 1:
                state.call["boxes"] = [p[1:] for p in patches if isinstance(p, list)]
            answer = self.server.request(name, patches, args, state.image[0], key)
            if answer is not None:
                self._answer(key, *answer, replies)

    def _answer(self, key: int, ok: bool, value: Any, replies: dict[int, list[Any]]) -> None:
        state = self._states.get(key)
        if state is None or state.call is None or state.worker is None:
            return  # the job's worker was lost meanwhile; its rerun will ask again
        entry, state.call = state.call, None
        entry["result" if ok else "error"] = value
        if not ok:
            entry["result"] = None
        state.trace.append(entry)
        replies.setdefault(id(state.worker), []).append([key, {"result": value} if ok else {"error": value}])

    def _watchdog(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            key, deadline, again = w.shared[0], w.shared[1], w.shared[0]
            if key >= 0 and key == again and now > deadline + _GRACE and int(key) in w.keys:
                self._lose(w, int(key), "timeout", f"ran longer than the timeout ({self.timeout:g} s)")

    def _finish(self, state: _State, result: ExecutionResult) -> None:
        if state.image:
            self.server.images.release(state.image[0])
        seconds = time.perf_counter() - state.started if state.started else 0.0
        result = ExecutionResult(answer=result.answer, error=result.error, error_kind=result.error_kind,
                                 trace=tuple(state.trace), seconds=round(seconds, 6))
        self._finished.append((state, result))
