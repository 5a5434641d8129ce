"""`Executor`: runs untrusted programs in sandbox worker processes, thousands at a time.

What is isolated. Each program is compiled under the restricted policy of
`viprog.executor.restrict` (no imports beyond `math`, no `_` names or attributes, no
frame/code/generator internals, no open/exec/eval, guarded getattr and str.format,
writes only to its own objects) and runs in a worker process that holds no model, no
pixels, no environment variables and cannot write files (`RLIMIT_FSIZE` 0), under an
address-space limit, a CPU-time limit and a recursion limit, behind the kernel layers of
`viprog.executor.layers` that this machine allows (no network namespace, a seccomp filter
against sockets, processes and signals, a file-descriptor limit, no capabilities);
a layer the machine refuses is logged once as a warning, and `viprog doctor` lists them.

Blame stays with its program. A program's generators are closed and its garbage
collected at its end, in its own turn, so no finalizer of it runs as another program.
The parent enforces each program's timeout (the time it computes) and its wall-clock cap
(computing plus waiting for primitives; waiting for its worker's run token, which the
neighbours hold, does not count). A program that overruns while it computes is killed
with its worker and blamed; the other programs in that worker are run again. When a
worker dies otherwise (SIGSEGV of a C-stack overflow, SIGKILL of the OOM killer), nobody
knows whose doing it was: each program that was in it runs again alone, in a fresh worker
of its own, and only the one that kills its solitary worker is blamed (`crash`, or
`memory` for SIGKILL, with the signal). Likewise a program that runs out of memory in a
shared worker (whose `memory_mb` a neighbour may be holding) runs again alone, and is
blamed (`memory`) only if it runs out there too. Only JSON crosses back: answers, primitive
requests, error lines; an answer and its trace stay within `max_result_bytes`, the
results of one run within `max_run_bytes`.

What is not isolated. Primitive results are computed in the parent by the profile,
outside the sandbox. A program may use its whole CPU and memory budget, and it shares
its worker's `memory_mb` with the programs waiting in that worker (a neighbour that runs
out of it costs a rerun alone, not a wrong result). Programs in the same
worker share nothing they can write.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence, Sized
from multiprocessing.connection import wait
from typing import Any, Self

from tqdm.auto import tqdm

from viprog.errors import DataError
from viprog.executor.job import Job, State
from viprog.executor.ordered import InOrder
from viprog.executor.result import ExecutionResult, within_budget
from viprog.executor.server import PrimitiveServer
from viprog.executor.spawn import WorkerHandle, death, start_forkserver, start_worker
from viprog.primitives.profile import Profile, get_profile
from viprog.primitives.spec import all_specs

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds between watchdog checks
_GRACE = 0.2  # seconds past a program's deadline before its worker is killed
_REQUEUES = 8  # runs lost to neighbours before a program is run alone
_HELD_BYTES = 64 * 2**20  # results an ordered run_iter holds back for a slower one, at most (about)
_SOLO = 4  # workers of one program each, at a time, per shared worker (they mostly wait for primitives)
_WARNED: set[str] = set()  # kernel layers already reported as refused by this process


class Executor:
    """Sandbox workers plus a PrimitiveServer; use as a context manager.

    timeout: seconds of a program's own run time (waiting for primitives excluded).
    wall_timeout: seconds of run time plus primitive waits (default 6 x timeout).
    memory_mb: address space a worker's programs may use beyond the worker's footprint.
    slots: programs in flight per worker (the more, the fuller the model batches).
    batch_size, batch_wait: a primitive's batch runs when it holds batch_size calls, when
        every program in flight waits for a result, or after batch_wait seconds.
    max_output_bytes: the answer as JSON; max_result_bytes: answer and trace as JSON;
    max_run_bytes: all results of one `run_many` call, which holds them (None: no limit);
        a result past a budget is an `output` error that names the budget.
    layers: apply the kernel layers; collect: close generators and collect garbage per job
        (both on unless measuring what they cost).
    """

    def __init__(self, profile: str | Profile = "shapes", *, workers: int = 2, timeout: float = 10.0,
                 wall_timeout: float | None = None, profile_options: dict[str, Any] | None = None,
                 batch_size: int = 32, batch_wait: float = 0.05, cache: bool = True, max_primitive_calls: int = 1000,
                 memory_mb: int = 1024, slots: int = 64, recursion_limit: int = 200,
                 max_output_bytes: int = 1_000_000, max_result_bytes: int = 1_048_576,
                 max_run_bytes: int | None = 2**30, max_argument_bytes: int = 16384, layers: bool = True,
                 collect: bool = True) -> None:
        wall = 6 * float(timeout) if wall_timeout is None else float(wall_timeout)
        if workers < 1 or slots < 1 or timeout <= 0 or wall < timeout:
            raise ValueError("workers and slots must be >= 1, timeout > 0 and wall_timeout >= timeout")
        if max_result_bytes < 1024 or (max_run_bytes is not None and max_run_bytes < max_result_bytes):
            raise ValueError("max_result_bytes must be >= 1024 and max_run_bytes >= max_result_bytes")
        self.profile = get_profile(profile, **(profile_options or {})) if isinstance(profile, str) else profile
        self.timeout, self.wall_timeout, self.slots = float(timeout), wall, slots
        self.max_result_bytes, self.max_run_bytes = max_result_bytes, max_run_bytes
        self.wall_message = (f"ran longer than its wall-clock cap ({wall:g} s of computing and waiting for "
                             "primitives, wall_timeout)")
        self.max_message = max_result_bytes + max_argument_bytes + 65536
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.server = PrimitiveServer(self.profile, batch_size=batch_size, batch_wait=batch_wait, cache=cache,
                                      on_done=self._wake)
        self.settings = {"specs": [s.to_json() for s in all_specs()], "timeout": self.timeout, "slots": slots,
                         "wall_timeout": wall, "wall_message": self.wall_message, "memory_mb": memory_mb,
                         "recursion_limit": recursion_limit, "stack_kb": 4096,
                         "max_primitive_calls": max_primitive_calls, "max_output_bytes": max_output_bytes,
                         "max_result_bytes": max_result_bytes, "cache": cache,
                         "max_argument_bytes": max_argument_bytes, "layers": layers, "collect": collect}
        self.layers: dict[str, str | None] = {}  # as the first worker reported them: None = active
        self._ctx = mp.get_context("forkserver")
        start_forkserver(self._ctx)
        self._keys = itertools.count()
        self._states: dict[int, State] = {}
        self._queue: deque[State] = deque()
        self._alone: deque[State] = deque()  # programs waiting for a worker of their own
        self._finished: list[tuple[State, ExecutionResult]] = []
        self._workers = [start_worker(self._ctx, self.settings) for _ in range(workers)]
        self._solo: list[WorkerHandle] = []
        self._retired: list[Any] = []  # processes of solo workers that finished their program
        self._wall_checked = 0.0
        self._busy = False  # a run_iter is under way
        self.held_high = (0, 0)  # the last ordered run_iter's fullest buffer: (results, bytes)

    # -- public API ----------------------------------------------------------------------
    def run(self, job: Job) -> ExecutionResult:
        return self.run_many([job])[0]

    def run_many(self, jobs: Sequence[Job], progress: bool | str = False) -> list[ExecutionResult]:
        """Run every job; results in job order, one `ExecutionResult` each."""
        results: list[ExecutionResult | None] = [None] * len(jobs)
        for index, result in self.run_iter(jobs, progress, max_bytes=self.max_run_bytes):
            results[index] = result
        return results  # type: ignore[return-value]

    def run_iter(self, jobs: Iterable[Job], progress: bool | str = False, ordered: bool = False,
                 max_bytes: int | None = None) -> Iterator[tuple[int, ExecutionResult]]:
        """Run every job, yielding `(index, result)` as each finishes (in job order when
        `ordered`), so a caller can write results out instead of holding them. Jobs are
        read from `jobs` as workers have room for them; when `ordered`, results that wait
        for a slower one count toward that room (and at most 64 MiB of them are held). Stopping early cancels the rest.
        max_bytes: a budget for all results yielded (`run_many` passes max_run_bytes)."""
        if not self._workers:
            raise RuntimeError("the Executor is closed")
        if self._busy:
            raise RuntimeError("the Executor is running another run_iter: finish or close it first")
        self._busy = True
        source = enumerate(jobs)
        ahead = 2 * self.slots * len(self._workers)
        bar = tqdm(total=len(jobs) if isinstance(jobs, Sized) else None, disable=not progress, unit="prog",
                   desc=progress if isinstance(progress, str) else "programs")
        left, more, spent = 0, True, 0
        order = InOrder(ahead, _HELD_BYTES)
        try:
            while left or more:
                while more and len(self._queue) + len(self._states) + len(order) < ahead and not order.full():
                    item = next(source, None)
                    if item is None:
                        more = False
                    else:
                        self._queue.append(State(*item))
                        left += 1
                self._dispatch()
                self.server.set_running(sum(1 for state in self._states.values() if state.call is None))
                self._step()
                finished, self._finished = self._finished, []
                left -= len(finished)
                bar.update(len(finished))
                for state, result in finished:
                    result, size = within_budget(result, state.size or state.trace_bytes + 512, spent, max_bytes)
                    spent += size
                    if not ordered:
                        yield state.index, result
                        continue
                    yield from order.add(state.index, result, size)
        except BaseException:
            self._reset()
            raise
        finally:
            self.held_high = order.high
            self._busy = False
            bar.close()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        for w in self._workers + self._solo:
            w.conn.close()
        for proc in [w.proc for w in self._workers + self._solo] + self._retired:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._workers, self._solo, self._retired = [], [], []
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
    def _live(self, w: WorkerHandle) -> bool:
        return w in self._workers or w in self._solo

    def _drop(self, w: WorkerHandle) -> None:
        """Forget a worker that is gone or retired: a shared one is replaced at once."""
        if w in self._workers:
            self._workers[self._workers.index(w)] = start_worker(self._ctx, self.settings)
        elif w in self._solo:
            self._solo.remove(w)

    def _lose(self, w: WorkerHandle, culprit: int | None, kind: str | None, message: str) -> None:
        """Kill and replace `w`. With a `kind`, its culprit fails with it and the others run
        again; without (nobody knows whose doing it was), each of its programs runs alone."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        w.conn.close()
        self._drop(w)
        for key in sorted(w.keys):
            state = self._states.pop(key)
            self._forget_run(state)
            if key == culprit and kind is not None:
                self._finish(state, ExecutionResult.failure(kind, message))  # type: ignore[arg-type]
            elif kind is None or state.requeues >= _REQUEUES:
                self._run_alone(state)
            else:
                state.requeues += 1
                self._queue.appendleft(state)

    @staticmethod
    def _forget_run(state: State) -> None:
        state.trace, state.trace_bytes, state.call, state.worker = [], 0, None, None
        state.used = state.waited = 0.0

    def _run_alone(self, state: State) -> None:
        state.alone = True
        self._alone.append(state)

    def _died(self, w: WorkerHandle) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        holder = int(w.shared[0]) if w.shared[0] >= 0 else None
        if code == -signal.SIGXCPU:
            self._lose(w, holder, "timeout", f"exceeded its CPU time (timeout {self.timeout:g} s)")
        elif w.solo and w.keys:  # it ran one program, alone: that program is the cause
            how = death(code) if code is not None else "a malformed message"
            if code == -signal.SIGKILL:
                message = "its worker was killed (SIGKILL: out of memory?) while it ran alone"
            else:
                message = f"its worker died ({how}: a C-stack overflow or an interpreter fault) while it ran alone"
            self._lose(w, next(iter(w.keys)), "memory" if code == -signal.SIGKILL else "crash", message)
        else:
            self._lose(w, None, None, "")

    def _retire(self, w: WorkerHandle) -> None:
        """A solo worker whose program finished: it exits when its pipe closes."""
        w.conn.close()
        self._solo.remove(w)
        self._retired.append(w.proc)

    def _reset(self) -> None:
        """After an interruption: fresh workers, no job left behind."""
        for state in [*self._states.values(), *self._queue, *self._alone]:
            if state.image:
                self.server.images.release(state.image[0])
        for w in self._workers + self._solo:
            w.keys.clear()
            self._lose(w, None, None, "interrupted")
        self._states.clear()
        self._queue.clear()
        self._alone.clear()
        self._finished.clear()

    # -- the loop ------------------------------------------------------------------------
    def _acquire(self, state: State) -> bool:
        if state.image:
            return True
        try:
            ref = self.server.images.acquire(state.job.image_id, state.job.image, state.job.meta)
        except Exception as exc:  # noqa: BLE001 — an unreadable image fails its jobs only
            text = str(exc) if isinstance(exc, DataError) else f"image {state.job.image_id!r}: {exc!r}"
            self._finished.append((state, ExecutionResult.failure("primitive", text[:400])))
            return False
        state.image = [ref.id, ref.width, ref.height]
        return True

    def _start(self, w: WorkerHandle, states: list[State]) -> None:
        batch = []
        for state in states:
            state.key = next(self._keys)
            state.worker, state.started = w, time.perf_counter()
            self._states[state.key] = state
            w.keys.add(state.key)
            batch.append([state.key, state.job.program, state.image, state.job.query])
        if batch:
            self._send(w, {"op": "run", "jobs": batch})

    def _dispatch(self) -> None:
        while self._alone and len(self._solo) < _SOLO * len(self._workers):
            w = start_worker(self._ctx, self.settings, solo=True)
            self._solo.append(w)
            self._start(w, [self._alone.popleft()])
        while self._queue:
            w = max(self._workers, key=lambda w: self.slots - len(w.keys))
            free = self.slots - len(w.keys)
            if free <= 0:
                return
            share = max(1, min(free, -(-len(self._queue) // len(self._workers))))
            batch = [s for s in (self._queue.popleft() for _ in range(min(share, len(self._queue))))
                     if self._acquire(s)]
            self._start(w, batch)

    def _send(self, w: WorkerHandle, message: dict[str, Any]) -> None:
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
        everyone = self._workers + self._solo
        conns = {w.conn: w for w in everyone}
        sentinels = {w.proc.sentinel: w for w in everyone}
        ready = wait([*conns, *sentinels, self._wake_r], timeout=_POLL)
        replies: dict[int, list[Any]] = {}
        for obj in ready:
            w = conns.get(obj)
            if w is not None and self._live(w):
                self._drain(w, replies)
        if self._wake_r in ready:
            os.read(self._wake_r, 65536)
        for pending, ok, value in self.server.completed():
            for key in pending.waiters:
                self._answer(key, ok, value, replies)
        self.server.set_running(sum(1 for state in self._states.values() if state.call is None))
        for w in self._workers + self._solo:
            keys = replies.pop(id(w), None)
            if keys:
                self._send(w, {"op": "reply", "replies": keys})
        for obj in ready:
            w = sentinels.get(obj)
            if w is not None and self._live(w):
                self._died(w)
        self._watchdog()
        if self._retired:
            self._retired = [p for p in self._retired if p.join(0) or p.exitcode is None]

    def _drain(self, w: WorkerHandle, replies: dict[int, list[Any]]) -> None:
        while self._live(w):
            try:
                if not w.conn.poll():
                    return
                raw = w.conn.recv_bytes(self.max_message)
                self._handle(w, json.loads(raw), len(raw), replies)
            except (EOFError, OSError, ValueError, TypeError, KeyError, IndexError):
                self._died(w)  # dead, or sent what our worker code never sends: replace it

    def _handle(self, w: WorkerHandle, message: dict[str, Any], size: int, replies: dict[int, list[Any]]) -> None:
        if message["op"] == "hello":
            self._hello(message["layers"])
            return
        key = message["key"]
        state = self._states.get(key) if key in w.keys else None
        if state is None:
            if message["op"] == "done":
                w.cancelled.discard(key)
            return
        if message["op"] == "done":
            del self._states[key]
            w.keys.discard(key)
            if message.get("kind") == "memory" and not w.solo:
                # the worker's memory_mb is shared: whoever holds it may be a neighbour
                self._forget_run(state)
                self._run_alone(state)
                return
            if "answer" in message:
                result = ExecutionResult(answer=message["answer"])
            else:
                result = ExecutionResult.failure(message["kind"], str(message["error"]))
            if isinstance(message.get("trace"), list):
                state.trace = message["trace"]
            state.size = size
            self._finish(state, result)
            if w.solo:
                self._retire(w)
        elif message["op"] == "call":
            name, patches, args = message["call"]
            state.call = {"primitive": name, "box": patches[0][1:] if patches else None, "args": args}
            state.call_since, state.used = time.monotonic(), float(message["used"])
            if isinstance(patches, list) and len(patches) > 1:
                state.call["boxes"] = [p[1:] for p in patches if isinstance(p, list)]
            answer = self.server.request(name, patches, args, state.image[0], key)
            if answer is not None:
                self._answer(key, *answer, replies)

    def _hello(self, layers: dict[str, str | None]) -> None:
        if not self.layers:
            self.layers = dict(layers)
        for name, reason in layers.items():
            if reason and name not in _WARNED:
                _WARNED.add(name)
                log.warning("sandbox layer %r is not active on this machine: %s", name, reason)

    def _answer(self, key: int, ok: bool, value: Any, replies: dict[int, list[Any]]) -> None:
        state = self._states.get(key)
        if state is None or state.call is None or state.worker is None:
            return  # the job's worker was lost meanwhile; its rerun will ask again
        entry, state.call = state.call, None
        state.waited += time.monotonic() - state.call_since
        entry["result" if ok else "error"] = value
        if not ok:
            entry["result"] = None
        size = len(json.dumps(entry)) + 2  # with its separator in the trace's JSON list
        if state.trace_bytes + size <= self.max_result_bytes:  # the worker's own trace replaces this one
            state.trace.append(entry)
            state.trace_bytes += size
        replies.setdefault(id(state.worker), []).append([key, {"result": value} if ok else {"error": value}])

    def _watchdog(self) -> None:
        now = time.monotonic()
        for w in self._workers + self._solo:
            key, deadline, again = w.shared[0], w.shared[1], w.shared[0]
            if key >= 0 and key == again and now > deadline + _GRACE and (int(key) in w.keys or
                                                                          int(key) in w.cancelled):
                self._lose(w, int(key), "timeout", f"ran longer than its timeout ({self.timeout:g} s of "
                           f"computing, timeout; {self.wall_timeout:g} s with primitive waits, wall_timeout)")
        if now - self._wall_checked < _POLL:
            return
        self._wall_checked = now
        late = [s for s in self._states.values()
                if s.call is not None and s.used + s.waited + now - s.call_since > self.wall_timeout]
        for state in late:  # waiting for a primitive past its wall clock: it fails now, its worker goes on
            w = state.worker
            assert w is not None
            if w.solo:
                self._lose(w, state.key, "timeout", self.wall_message)
                continue
            del self._states[state.key]
            w.keys.discard(state.key)
            w.cancelled.add(state.key)
            self._send(w, {"op": "cancel", "key": state.key})
            self._finish(state, ExecutionResult.failure("timeout", self.wall_message))

    def _finish(self, state: State, result: ExecutionResult) -> None:
        if state.image:
            self.server.images.release(state.image[0])
        seconds = time.perf_counter() - state.started if state.started else 0.0
        result = ExecutionResult(answer=result.answer, error=result.error, error_kind=result.error_kind,
                                 trace=tuple(state.trace), seconds=round(seconds, 6))
        self._finished.append((state, result))
