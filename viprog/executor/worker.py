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
files, an empty environment, cwd `/`, the recursion limit, and the kernel layers of
`viprog.executor.layers` (reported to the parent in the first message); per program run
by the token holder: a CPU-time soft limit (a backstop in case the parent is slow to
kill), a wall-clock cap (run time plus primitive waits), a cap on primitive calls and on
the size of the answer and trace. Messages are JSON both ways: nothing the program
produced is ever unpickled by the parent.

Finalizers. The only program code that can run when an object dies is a suspended
generator's `finally` / `except` block (programs cannot define `__del__`, weakref or
async code). The compile wraps every generator function, the job keeps its generators
alive and closes them when it ends, in its own turn; then its garbage is collected while
the worker still holds the run token, so neither its finalizers nor its leftover memory
are ever charged to the next program. The worker's own objects are frozen out of the
collector (`gc.freeze`), so the per-job collection scans only what programs made.
"""

from __future__ import annotations

import gc
import json
import math
import os
import queue
import resource
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import CodeType, TracebackType
from typing import Any

from viprog.executor import layers
from viprog.executor.restrict import (
    ENTRY_POINT,
    FILENAME,
    TRACK_GENERATOR,
    CodeCache,
    PolicyViolation,
    base_namespace,
    take_violation,
)
from viprog.primitives import patch as P

_CACHE_SIZE = 50_000
_PRUNE_GENERATORS = 4096  # finished generators are dropped from a job's list this often


class _Limit(Exception):
    """A per-program limit was hit; recorded on the job so catching it does not help."""


class _Job:
    __slots__ = (
        "calls",
        "event",
        "generators",
        "image",
        "key",
        "mark",
        "program",
        "query",
        "remaining",
        "reply",
        "resumed",
        "sticky",
        "trace",
        "waited",
    )

    def __init__(self, key: int, program: str, image: P.ImageRef, query: str | None, timeout: float) -> None:
        self.key, self.program, self.image, self.query = key, program, image, query
        self.reply: dict[str, Any] | None = None
        self.event = threading.Event()
        self.remaining = timeout
        self.waited = 0.0  # seconds spent waiting for primitive results
        self.generators: list[Any] = []  # the program's generators, closed in its own turn at its end
        self.mark = 0  # the worker's count of old-generation collections when the job began
        self.resumed = 0.0
        self.calls = 0
        self.sticky: tuple[str, str] | None = None  # (error kind, message) that catching cannot undo
        self.trace: list[dict[str, Any]] = []


class _TooLarge(ValueError):
    """The answer does not fit in max_output_bytes of JSON."""


def _fits(value: Any, budget: list[int], depth: int = 0) -> Any:
    """`value` as plain JSON data (exact types, no subclass), spending `budget[0]` bytes of
    its JSON encoding; `_TooLarge` when it does not fit, TypeError/ValueError when it is
    not JSON-able. An ImagePatch becomes its `to_json()`, itself checked the same way."""
    if depth > 64:
        raise ValueError("the answer is nested more than 64 levels deep")
    if value is None or value is True or value is False:
        budget[0] -= 5
        out = value
    elif isinstance(value, int):
        if value.bit_length() > 13000:
            raise ValueError("the answer holds an int of more than 3900 digits")
        out = int.__int__(value)
        budget[0] -= len(repr(out))
    elif isinstance(value, float):
        out = float.__float__(value)
        budget[0] -= 24
    elif isinstance(value, str):
        if len(value) + 2 > budget[0]:
            raise _TooLarge()
        out = str.__str__(value)
        budget[0] -= len(json.dumps(out))
    elif isinstance(value, P.ImagePatch):
        out = _fits(value.to_json(), budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        budget[0] -= 2 + len(value)
        if budget[0] < 0:
            raise _TooLarge()
        out = [_fits(v, budget, depth + 1) for v in value]
    elif isinstance(value, dict):
        budget[0] -= 2 + 2 * len(value)
        if budget[0] < 0:
            raise _TooLarge()
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("a returned dict must have str keys")
            out[_fits(k, budget, depth + 1)] = _fits(v, budget, depth + 1)
    else:
        raise TypeError(f"returned a {type(value).__name__}, which is not JSON-able data "
                        "(return str, bool, number, ImagePatch, or lists/dicts of them)")
    if budget[0] < 0:
        raise _TooLarge()
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
        self.token = threading.Lock()  # held by the one program that executes
        self.send_lock = threading.Lock()  # the pipe to the parent, shared by all programs
        self.jobs: dict[int, _Job] = {}
        self.local = threading.local()
        self.codes = CodeCache()
        self.cache: dict[str, str] = {}  # primitive results this worker has seen: request → result JSON
        self.inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.promotions = 0  # collections of generation 1 or 2 so far (they move objects to the oldest)
        gc.callbacks.append(self.count_collection)
        for spec in settings["specs"]:
            P.install(spec)
        writable = (P.ImagePatch, dict, list)
        extra: dict[str, Any] = {"ImagePatch": P.ImagePatch, "distance": P.distance, "bool_to_yesno": P.bool_to_yesno,
                                 "coerce_to_numeric": P.coerce_to_numeric, TRACK_GENERATOR: self.track, **P.FUNCTIONS}
        self.namespace = base_namespace(extra, writable)
        P.set_transport(self.transport)

    # -- the run token: one program executes at a time; its deadline is public ----------
    def resume(self, job: _Job) -> None:
        self.token.acquire()
        self.local.job = job
        job.resumed = now = time.monotonic()
        self.shared[1] = now + max(0.0, min(job.remaining, self.wall_left(job)))
        self.shared[0] = job.key
        cpu = time.process_time() + job.remaining + 1.0
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(cpu), resource.RLIM_INFINITY))

    def pause(self, job: _Job) -> None:
        self.shared[0] = -1.0
        job.remaining -= time.monotonic() - job.resumed
        self.token.release()

    def wall_left(self, job: _Job) -> float:
        """Seconds left of the wall-clock cap: run time plus primitive waits (waits for the
        run token are the neighbours' doing and do not count)."""
        return self.s["wall_timeout"] - (self.s["timeout"] - job.remaining) - job.waited

    def track(self, function: Any) -> Any:
        """Wraps each generator function of a program (the restricted compile adds it): the
        job keeps its generators alive until its end and closes them then, in its own turn,
        so that a `finally:` block can never run later as another program."""
        def generator_function(*args: Any, **kwargs: Any) -> Any:
            generator = function(*args, **kwargs)
            kept = self.local.job.generators
            kept.append(generator)
            if len(kept) % _PRUNE_GENERATORS == 0:
                kept[:] = [g for g in kept if g.gi_frame is not None]
            return generator

        generator_function.__wrapped__ = function  # type: ignore[attr-defined]
        return generator_function

    def close_generators(self, job: _Job) -> None:
        """At the end of a job's turn: its generators' finally blocks run now, as this
        program, under its deadline and its policy; they are its last code to run."""
        while job.generators:
            try:
                job.generators.pop().close()
            except BaseException:  # noqa: BLE001, S110 — a finally block's own error; policy violations stay recorded
                pass

    def count_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] >= 1:
            self.promotions += 1

    def collect(self, job: _Job) -> None:
        """Free the job's garbage cycles before the next program runs, so that memory it left
        is never charged to another. No program code runs here (its generators are closed,
        programs cannot define `__del__`), so the time is nobody's: the job's clock is off.
        The young generations hold all the job made, unless a collection of generation 1 or
        2 moved some of it to the oldest since the job began: then a full collection."""
        if self.s["collect"]:
            gc.collect() if self.promotions != job.mark else gc.collect(1)

    # -- the transport that ImagePatch's primitive methods use ---------------------------
    def transport(self, name: str, patches: list[tuple[Any, ...]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job: _Job = self.local.job
        job.calls += 1
        if job.calls > self.s["max_primitive_calls"]:
            limit = f"more than {self.s['max_primitive_calls']} primitive calls (max_primitive_calls)"
            job.sticky = job.sticky or ("runtime", limit)
            raise _Limit(job.sticky[1])
        try:
            body = json.dumps([name, patches, args])
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}(): arguments must be str, numbers, bools or lists of them ({exc})") from None
        if len(body) > self.s["max_argument_bytes"]:
            raise ValueError(f"{name}(): arguments larger than {self.s['max_argument_bytes']} bytes as JSON")
        entry: dict[str, Any] = {"primitive": name, "box": list(patches[0][1:]), "args": list(args)}
        if len(patches) > 1:
            entry["boxes"] = [list(p[1:]) for p in patches]
        job.trace.append(entry)
        text = self.cache.get(body)
        if text is None:
            self.pause(job)  # the program's clock stops before the send, which may wait for the parent
            used = self.s["timeout"] - job.remaining
            sent = time.monotonic()
            with self.send_lock:
                self.conn.send_bytes(b'{"op": "call", "key": %d, "used": %.6f, "call": %s}'
                                     % (job.key, used, body.encode()))
            job.event.wait()
            job.event.clear()
            job.waited += time.monotonic() - sent
            self.resume(job)
            reply, job.reply = job.reply, None
            assert reply is not None
            if self.wall_left(job) <= 0:
                job.sticky = job.sticky or ("timeout", self.s["wall_message"])
                raise _Limit(job.sticky[1])
            if "error" in reply:
                entry["result"], entry["error"] = None, reply["error"]
                job.sticky = job.sticky or ("primitive", reply["error"])
                raise P.PrimitiveError(reply["error"])
            text = json.dumps(reply["result"])
            if self.s["cache"]:
                if len(self.cache) >= _CACHE_SIZE:
                    self.cache.clear()
                self.cache[body] = text
        entry["result"] = json.loads(text)
        return json.loads(text)  # a fresh copy: what a program mutates is its own

    # -- one program ----------------------------------------------------------------------
    def execute(self, job: _Job) -> dict[str, Any]:
        code = self.codes.get(job.program)
        if not isinstance(code, CodeType):
            return {"error": code.error, "kind": code.error_kind}
        namespace = dict(self.namespace)
        take_violation()
        try:
            out = self.evaluate(job, code, namespace)
        finally:
            self.close_generators(job)
            namespace.clear()  # the program's functions and its globals form a cycle: break it
        return self.sticky(job) or out

    def evaluate(self, job: _Job, code: CodeType, namespace: dict[str, Any]) -> dict[str, Any]:
        try:
            exec(code, namespace)  # noqa: S102 — restricted code object, guarded namespace
            fn = namespace.get(ENTRY_POINT)
            if not callable(fn):
                return {"error": f"{ENTRY_POINT} is not a function", "kind": "runtime"}
            takes_query = getattr(getattr(getattr(fn, "__wrapped__", fn), "__code__", None), "co_argcount", 1) > 1
            answer = fn(job.image, job.query) if takes_query else fn(job.image)
        except BaseException as exc:  # noqa: BLE001 — every failure of untrusted code becomes a result
            return self.failure(job, exc)
        try:
            out = {"answer": _fits(answer, [self.s["max_output_bytes"]])}
        except (_TooLarge, RecursionError):
            out = {"error": f"the answer is larger than {self.s['max_output_bytes']} bytes (max_output_bytes)",
                   "kind": "output"}
        except (TypeError, ValueError) as exc:
            out = {"error": _one_line(str(exc)), "kind": "output"}
        except BaseException as exc:  # noqa: BLE001 — an ImagePatch.to_json the program overrode
            out = self.failure(job, exc)
            if out["kind"] == "runtime":
                out = {"error": "the answer could not be converted: " + out["error"], "kind": "output"}
        return self.sticky(job) or out

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
        job.mark = self.promotions
        message = b""
        try:
            try:
                out = self.execute(job)
            except MemoryError:
                out = {"error": "out of memory", "kind": "memory"}
            message = self.done_message(job, out)
        finally:
            del self.jobs[job.key]
            self.local.job = None
            self.shared[0] = -1.0  # off the job's clock, still holding the run token
            self.collect(job)
            self.pause(job)
        with self.send_lock:
            self.conn.send_bytes(message)

    def done_message(self, job: _Job, out: dict[str, Any]) -> bytes:
        """The job's outcome and its trace, within max_result_bytes; past it an answer is
        dropped (an `output` error; an error stays) and the trace keeps its leading entries."""
        budget = self.s["max_result_bytes"]
        if "error" in out:
            out = {"error": _one_line(out["error"]), "kind": out["kind"]}
        trace = job.trace
        try:
            message = json.dumps({"op": "done", "key": job.key, "trace": trace, **out}).encode()
            if len(message) <= budget:
                return message
            if "answer" in out:
                out = {"error": f"answer and trace larger than {budget} bytes (max_result_bytes)", "kind": "output"}
            while True:
                trace = trace[:len(trace) // 2]
                message = json.dumps({"op": "done", "key": job.key, "trace": trace, **out}).encode()
                if len(message) <= budget or not trace:
                    return message
        except Exception:  # noqa: BLE001 — never leave the parent waiting for this job
            return json.dumps({"op": "done", "key": job.key, "kind": "output",
                               "error": "the result could not be encoded as JSON"}).encode()

    # -- threads: all created up front, before any program can use up the address space --
    def start_slots(self) -> None:
        for _ in range(self.s["slots"]):
            threading.Thread(target=self.slot_loop, daemon=True).start()

    def slot_loop(self) -> None:
        while True:
            try:
                self.run_job(self.inbox.get())
            except BaseException:  # noqa: BLE001 — a job left unanswered would hang the parent
                os._exit(70)

    def serve(self) -> None:
        """Read the parent's messages until it closes the pipe."""
        while True:
            try:
                message = json.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                os._exit(0)
            if message["op"] == "run":
                for key, program, image, query in message["jobs"]:
                    job = _Job(key, program, P.ImageRef(*image), query, self.s["timeout"])
                    self.jobs[key] = job
                    self.inbox.put(job)
            elif message["op"] == "reply":
                for key, reply in message["replies"]:
                    job = self.jobs.get(key)
                    if job is not None:
                        job.reply = reply
                        job.event.set()
            elif message["op"] == "cancel":  # the parent gave up waiting: the job ran past its wall clock
                job = self.jobs.get(message["key"])
                if job is not None:
                    job.sticky = job.sticky or ("timeout", self.s["wall_message"])
                    job.reply = {"error": self.s["wall_message"]}
                    job.event.set()


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def harden(settings: dict[str, Any]) -> dict[str, str | None]:
    """Process-wide settings, before any thread starts; returns the early kernel layers."""
    early = layers.apply_early() if settings["layers"] else {}
    os.environ.clear()
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file write fails with EFBIG instead of killing
    threading.stack_size(settings["stack_kb"] * 1024)
    sys.setrecursionlimit(settings["recursion_limit"] + 40)  # + the worker's own frames
    return early


def limit(settings: dict[str, Any]) -> None:
    """Resource limits, once the threads (and their stacks) exist."""
    address_space = _vm_bytes() + settings["memory_mb"] * 2**20
    for which, value in [(resource.RLIMIT_AS, address_space), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(which, (value, value))


def worker_main(conn: Connection, shared: Any, settings: dict[str, Any]) -> None:
    """Entry point of a worker process (started by the Executor through forkserver)."""
    active = harden(settings)
    worker = Worker(conn, shared, settings)
    worker.start_slots()
    limit(settings)
    if settings["layers"]:
        active.update(layers.apply_late())
    gc.freeze()  # the worker's own objects: a per-job collection scans only what programs made
    conn.send_bytes(json.dumps({"op": "hello", "layers": active}).encode())
    worker.serve()
