"""A sandbox worker process: runs restricted programs, holds no model and no pixels.

Why a process per worker with many programs in flight: a program spends most of its life
waiting for primitive results, and the PrimitiveServer can only batch model calls across
programs that are waiting at the same time. So a worker keeps up to `slots` programs in
flight, each in its own thread, but lets only one of them execute Python at a time (the
*run token*): a program holds the token while it computes and hands it over while it
waits for a primitive. At any moment the worker knows which program is running, and
publishes it (job key and deadline) in shared memory; the parent kills the worker when
that program overruns its time, and knows whom to blame.

Limits set here, once per worker process: address space (`RLIMIT_AS`: the worker's own
footprint plus `memory_mb` for its programs), no file writes (`RLIMIT_FSIZE` 0), no core
files, an empty environment, cwd `/`, the recursion limit; per program run
by the token holder: a CPU-time soft limit (a backstop in case the parent is slow to
kill), a cap on primitive calls and on the size of the returned value. Messages are JSON
both ways: nothing the program produced is ever unpickled by the parent.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import CodeType, TracebackType
from typing import Any

from viprog.executor.restrict import ENTRY_POINT, FILENAME, CodeCache, PolicyViolation, base_namespace, take_violation
from viprog.primitives import patch as P


class _Limit(Exception):
    """A per-program limit was hit; recorded on the job so catching it does not help."""


class _Job:
    __slots__ = ("key", "program", "image", "query", "reply", "event", "remaining", "resumed", "calls", "sticky")

    def __init__(self, key: int, program: str, image: P.ImageRef, query: str | None, timeout: float) -> None:
        self.key, self.program, self.image, self.query = key, program, image, query
        self.reply: dict[str, Any] | None = None
        self.event = threading.Event()
        self.remaining = timeout
        self.resumed = 0.0
        self.calls = 0
        self.sticky: tuple[str, str] | None = None  # (error kind, message) that catching cannot undo


def _fits(value: Any, budget: list[int], depth: int = 0) -> Any:
    """`value` as plain JSON-able data, spending `budget[0]` bytes; ValueError when it does not fit."""
    if depth > 64:
        raise ValueError("the answer is nested more than 64 levels deep")
    if value is None or isinstance(value, (bool, int, float)):
        budget[0] -= 8
        out = value
    elif isinstance(value, str):
        budget[0] -= len(value) + 2
        out = value
    elif isinstance(value, P.ImagePatch):
        budget[0] -= 160
        out = value.to_json()
    elif isinstance(value, (list, tuple)):
        budget[0] -= 2 + len(value)
        if budget[0] < 0:
            raise ValueError("too large")
        out = [_fits(v, budget, depth + 1) for v in value]
    elif isinstance(value, dict):
        budget[0] -= 2 + 2 * len(value)
        if budget[0] < 0:
            raise ValueError("too large")
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a returned dict must have str keys")
        out = {k: _fits(v, budget, depth + 1) for k, v in value.items()}
    else:
        raise TypeError(f"returned a {type(value).__name__}, which is not JSON-able data "
                        "(return str, bool, number, ImagePatch, or lists/dicts of them)")
    if budget[0] < 0:
        raise ValueError("too large")
    return out


def _line_of(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


class Worker:
    """The state of one worker process (constructed in the child)."""

    def __init__(self, conn: Connection, shared: Any, settings: dict[str, Any]) -> None:
        self.conn, self.shared, self.s = conn, shared, settings
        self.token = threading.Lock()
        self.jobs: dict[int, _Job] = {}
        self.local = threading.local()
        self.codes = CodeCache()
        self.idle: list[threading.Condition] = []
        self.idle_lock = threading.Lock()
        for spec in settings["specs"]:
            P.install(spec)
        writable = (P.ImagePatch, dict, list)
        extra: dict[str, Any] = {"ImagePatch": P.ImagePatch, "distance": P.distance, "bool_to_yesno": P.bool_to_yesno,
                                 "coerce_to_numeric": P.coerce_to_numeric, **P.FUNCTIONS}
        self.namespace = base_namespace(extra, writable)
        P.set_transport(self.transport)

    # -- the run token: one program executes at a time; its deadline is public ----------
    def resume(self, job: _Job) -> None:
        self.token.acquire()
        self.local.job = job
        job.resumed = now = time.monotonic()
        self.shared[1] = now + job.remaining
        self.shared[0] = job.key
        cpu = time.process_time() + job.remaining + 1.0
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(cpu), resource.RLIM_INFINITY))

    def pause(self, job: _Job) -> None:
        self.shared[0] = -1.0
        job.remaining -= time.monotonic() - job.resumed
        self.token.release()

    # -- the transport that ImagePatch's primitive methods use ---------------------------
    def transport(self, name: str, patches: list[tuple[Any, ...]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job: _Job = self.local.job
        job.calls += 1
        if job.calls > self.s["max_primitive_calls"]:
            job.sticky = job.sticky or ("runtime", f"more than {self.s['max_primitive_calls']} primitive calls "
                                                    "(max_primitive_calls)")
            raise _Limit(job.sticky[1])
        try:
            message = json.dumps({"op": "call", "key": job.key, "name": name, "patches": patches, "args": args})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}(): arguments must be str, numbers, bools or lists of them ({exc})") from None
        if len(message) > self.s["max_message_bytes"]:
            raise ValueError(f"{name}(): arguments too large")
        self.conn.send_bytes(message.encode())
        self.pause(job)
        job.event.wait()
        job.event.clear()
        self.resume(job)
        reply, job.reply = job.reply, None
        assert reply is not None
        if "error" in reply:
            job.sticky = job.sticky or ("primitive", reply["error"])
            raise P.PrimitiveError(reply["error"])
        return reply["result"]

    # -- one program ----------------------------------------------------------------------
    def execute(self, job: _Job) -> dict[str, Any]:
        code = self.codes.get(job.program)
        if not isinstance(code, CodeType):
            return {"error": code.error, "kind": code.error_kind}
        namespace = dict(self.namespace)
        take_violation()
        try:
            exec(code, namespace)  # noqa: S102 — restricted code object, guarded namespace
            fn = namespace.get(ENTRY_POINT)
            if not callable(fn):
                return {"error": f"{ENTRY_POINT} is not a function", "kind": "runtime"}
            takes_query = getattr(getattr(fn, "__code__", None), "co_argcount", 1) > 1
            answer = fn(job.image, job.query) if takes_query else fn(job.image)
        except BaseException as exc:  # noqa: BLE001 — every failure of untrusted code becomes a result
            return self.failure(job, exc)
        sticky = self.sticky(job)
        if sticky:
            return sticky
        try:
            budget = [self.s["max_output_bytes"]]
            plain = _fits(answer, budget)
            encoded = json.dumps({"op": "done", "key": job.key, "answer": plain})
        except ValueError as exc:
            if str(exc) == "too large" or isinstance(exc, RecursionError):
                return {"error": f"the answer is larger than {self.s['max_output_bytes']} bytes (max_output_bytes)",
                        "kind": "output"}
            return {"error": _one_line(str(exc)), "kind": "output"}
        except (TypeError, RecursionError) as exc:
            return {"error": _one_line(str(exc)), "kind": "output"}
        except MemoryError:
            return {"error": "out of memory while encoding the answer", "kind": "memory"}
        return {"encoded": encoded}

    def sticky(self, job: _Job) -> dict[str, Any] | None:
        violation = take_violation()
        if violation:
            return {"error": violation, "kind": "policy"}
        if job.sticky:
            return {"error": job.sticky[1], "kind": job.sticky[0]}
        return None

    def failure(self, job: _Job, exc: BaseException) -> dict[str, Any]:
        sticky = self.sticky(job)
        if sticky:
            return sticky
        if isinstance(exc, MemoryError):
            return {"error": f"out of memory (limit {self.s['memory_mb']} MB per worker)", "kind": "memory"}
        line = _line_of(exc.__traceback__)
        where = f"line {line}: " if line else ""
        if isinstance(exc, PolicyViolation):
            return {"error": where + str(exc), "kind": "policy"}
        try:
            text = f"{where}{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 — a program's exception whose __str__ fails
            text = f"{where}{type(exc).__name__}"
        return {"error": _one_line(text), "kind": "runtime"}

    def run_job(self, job: _Job) -> None:
        self.resume(job)
        try:
            try:
                out = self.execute(job)
            except MemoryError:
                out = {"error": "out of memory", "kind": "memory"}
            message = out.pop("encoded", None) or json.dumps({"op": "done", "key": job.key, **out})
            self.conn.send_bytes(message.encode())
        finally:
            del self.jobs[job.key]
            self.local.job = None
            self.pause(job)

    # -- threads --------------------------------------------------------------------------
    def start(self, job: _Job) -> None:
        self.jobs[job.key] = job
        with self.idle_lock:
            slot = self.idle.pop() if self.idle else None
        if slot is None:
            threading.Thread(target=self.slot_loop, args=(job,), daemon=True).start()
        else:
            with slot:
                slot.job = job  # type: ignore[attr-defined]
                slot.notify()

    def slot_loop(self, job: _Job) -> None:
        slot = threading.Condition()
        slot.job = None  # type: ignore[attr-defined]
        while True:
            self.run_job(job)
            with slot:
                with self.idle_lock:
                    self.idle.append(slot)
                while slot.job is None:  # type: ignore[attr-defined]
                    slot.wait()
                job, slot.job = slot.job, None  # type: ignore[attr-defined]

    def serve(self) -> None:
        """Read the parent's messages until it closes the pipe."""
        while True:
            try:
                message = json.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                os._exit(0)
            if message["op"] == "run":
                for key, program, image, query in message["jobs"]:
                    self.start(_Job(key, program, P.ImageRef(*image), query, self.s["timeout"]))
            elif message["op"] == "reply":
                for key, reply in message["replies"]:
                    job = self.jobs.get(key)
                    if job is not None:
                        job.reply = reply
                        job.event.set()


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def harden(settings: dict[str, Any]) -> None:
    """Process-wide limits, set once before any program runs."""
    os.environ.clear()
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file write fails with EFBIG instead of killing
    threading.stack_size(settings["stack_kb"] * 1024)
    sys.setrecursionlimit(settings["recursion_limit"] + 40)  # + the worker's own frames
    stacks = (settings["slots"] + 4) * settings["stack_kb"] * 1024
    address_space = _vm_bytes() + stacks + settings["memory_mb"] * 2**20
    limits: list[tuple[int, int]] = [(resource.RLIMIT_AS, address_space), (resource.RLIMIT_FSIZE, 0),
                                     (resource.RLIMIT_CORE, 0)]
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def worker_main(conn: Connection, shared: Any, settings: dict[str, Any]) -> None:
    """Entry point of a worker process (started by the Executor through forkserver)."""
    harden(settings)
    Worker(conn, shared, settings).serve()

