"""The PrimitiveServer: pixels, models and a batching, caching queue of primitive calls.

Why in the parent: models are large and slow to load, so exactly one copy lives here,
next to the pixels; sandbox workers hold only handles (image id + box). Each primitive
call from a program is a request. Requests for the same (primitive, image, boxes,
arguments) are answered from the cache, or join the identical request already in flight;
the rest wait in one queue per primitive. A server thread takes the primitive whose
oldest request has waited longest and lets its queue fill while more requests can come:
it runs the batch as soon as the queue holds `batch_size` requests, or no program is
left running (every program in flight is waiting for a result, so nothing more will
arrive), or the oldest request has waited `batch_wait` seconds. The batch is one
`Profile.run` call, made while the executor's loop goes on routing messages, so
requests that arrive during a batch fill the next one.

A failing batch is retried call by call, so one bad call fails only itself. A failure is
a one-line message that the program sees as `PrimitiveError` (error kind `primitive`).
Images are loaded on first use (their size when the first job on them starts, their
pixels when the first call on them runs) and their pixels are dropped when no job on
them is left; the cache keeps results (keyed by image id: an id must name one image).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from viprog.errors import DataError
from viprog.executor.lru import DEFAULT_MAX_BYTES, ResultCache
from viprog.images import read_rgb, read_size
from viprog.primitives.patch import ImageRef, PrimitiveError
from viprog.primitives.profile import Call, PatchData, Profile
from viprog.primitives.spec import SPECS

ImageSource = str | Path | np.ndarray | Callable[[], np.ndarray]
Key = tuple[str, tuple[tuple[Any, ...], ...], str]


def as_rgb(array: Any, image_id: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"image {image_id!r}: expected an H x W x 3 array, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)


@dataclass
class _Image:
    source: ImageSource
    meta: Mapping[str, Any]
    size: tuple[int, int] = (0, 0)  # width, height
    pixels: np.ndarray | None = None
    refs: int = 0

    def load(self, image_id: str) -> np.ndarray:
        pixels = self.pixels
        if pixels is None:
            source = self.source
            if isinstance(source, (str, Path)):
                pixels = read_rgb(source)
            else:
                pixels = as_rgb(source() if callable(source) else source, image_id)
            self.pixels = pixels
        return pixels


class ImageStore:
    """Images by id, loaded lazily and reference-counted by the jobs that use them."""

    def __init__(self) -> None:
        self.images: dict[str, _Image] = {}

    def acquire(self, image_id: str, source: ImageSource, meta: Mapping[str, Any] | None) -> ImageRef:
        """Register a job's image (its size is read now, its pixels on first call)."""
        entry = self.images.get(image_id)
        if entry is None or entry.refs == 0:
            entry = _Image(source, meta or {})
            if isinstance(source, (str, Path)):
                entry.size = read_size(source)
            else:
                pixels = entry.load(image_id)
                entry.size = (int(pixels.shape[1]), int(pixels.shape[0]))
            self.images[image_id] = entry
        entry.refs += 1
        return ImageRef(image_id, *entry.size)

    def release(self, image_id: str) -> None:
        entry = self.images[image_id]
        entry.refs -= 1
        if entry.refs == 0:
            entry.pixels = None

    def patch(self, image_id: str, box: tuple[int, int, int, int]) -> PatchData:
        entry = self.images[image_id]
        return PatchData(image_id, entry.load(image_id), box, entry.meta)


@dataclass
class Pending:
    """One distinct request waiting for the model, and who waits for its result."""

    key: Key
    name: str
    patches: list[tuple[str, int, int, int, int]]
    args: tuple[Any, ...]
    arrived: float
    waiters: list[Hashable] = field(default_factory=list)


def _plain(value: Any) -> Any:
    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):  # numpy scalars and arrays
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-able")

    return json.loads(json.dumps(value, default=default))


class PrimitiveServer:
    """Answers primitive requests with `profile`, batched per primitive and cached."""

    def __init__(self, profile: Profile, *, batch_size: int = 32, batch_wait: float = 0.05, cache: bool = True,
                 cache_max_bytes: int = DEFAULT_MAX_BYTES, on_done: Callable[[], None] = lambda: None) -> None:
        self.profile = profile
        self.batch_size, self.batch_wait = max(1, batch_size), max(0.0, batch_wait)
        self.use_cache = cache
        self.images = ImageStore()
        self.cache = ResultCache(cache_max_bytes)
        self.inflight: dict[Key, Pending] = {}
        self.queues: dict[str, deque[Pending]] = {}
        self.done: deque[tuple[Pending, bool, Any]] = deque()
        self.on_done = on_done
        self.cond = threading.Condition()
        self.stats = {"requests": 0, "cache_hits": 0, "joined": 0, "batches": 0, "batched_calls": 0, "model_seconds": 0.0}
        self.running = 0  # programs in flight that may still send requests
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- main thread -------------------------------------------------------------------
    def request(self, name: Any, patches: Any, args: Any, image_id: str, waiter: Hashable) -> tuple[bool, Any] | None:
        """Submit one call; returns `(ok, result or error)` at once (cache hit, invalid
        request) or None when `waiter` will be named in `completed()` later."""
        self.stats["requests"] += 1
        problem = self._invalid(name, patches, args, image_id)
        if problem:
            return False, problem
        handles = [(p[0], int(p[1]), int(p[2]), int(p[3]), int(p[4])) for p in patches]
        key: Key = (name, tuple(handles), json.dumps(args, sort_keys=True))
        if self.use_cache:
            hit, value = self.cache.lookup(key)
            if hit:
                self.stats["cache_hits"] += 1
                return True, value
            pending = self.inflight.get(key)
            if pending is not None:
                self.stats["joined"] += 1
                pending.waiters.append(waiter)
                return None
        pending = Pending(key, name, handles, tuple(args), time.monotonic(), [waiter])
        if self.use_cache:
            self.inflight[key] = pending
        with self.cond:
            self.queues.setdefault(name, deque()).append(pending)
            self.cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="primitive-server", daemon=True)
            self._thread.start()
        return None

    def _invalid(self, name: Any, patches: Any, args: Any, image_id: str) -> str | None:
        if not isinstance(name, str) or name not in SPECS:
            return f"unknown primitive {name!r}"
        if not self.profile.supports(name):
            return f"primitive {name!r} is not available in profile {self.profile.name!r}"
        if not isinstance(args, list) or not isinstance(patches, list) or not patches:
            return f"{name}: malformed request"
        width, height = self.images.images[image_id].size
        for p in patches:
            if not (isinstance(p, list) and len(p) == 5 and p[0] == image_id and all(type(v) is int for v in p[1:])
                    and 0 <= p[1] <= p[3] <= width and 0 <= p[2] <= p[4] <= height):
                return f"{name}: invalid patch handle {p!r} (a patch must come from the image given to the program)"
        return None

    def clear_cache(self) -> None:
        """Forget cached results (the workers keep theirs until they are replaced)."""
        self.cache.clear()

    def set_running(self, running: int) -> None:
        """How many programs in flight are computing (not waiting for a primitive)."""
        if running != self.running:
            self.running = running
            if running == 0:
                with self.cond:
                    self.cond.notify()

    def completed(self) -> list[tuple[Pending, bool, Any]]:
        """Finished requests since the last call; their results enter the cache."""
        out = []
        while self.done:
            pending, ok, value = self.done.popleft()
            if self.use_cache:
                self.inflight.pop(pending.key, None)
                if ok and pending.key not in self.cache:
                    self.cache.put(pending.key, value)
            out.append((pending, ok, value))
        return out

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- server thread -----------------------------------------------------------------
    def _next_batch(self) -> tuple[str, list[Pending]] | None:
        with self.cond:
            while not self._stop and not any(self.queues.values()):
                self.cond.wait()
            if self._stop:
                return None
            name = min((n for n, q in self.queues.items() if q), key=lambda n: self.queues[n][0].arrived)
            queue = self.queues[name]
            while len(queue) < self.batch_size and self.running > 0 and not self._stop:
                left = queue[0].arrived + self.batch_wait - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return name, [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            name, items = batch
            start = time.perf_counter()
            outcomes = self._run(name, items)
            self.stats["model_seconds"] += time.perf_counter() - start
            self.stats["batches"] += 1
            self.stats["batched_calls"] += len(items)
            self.done.extend((p, ok, value) for p, (ok, value) in zip(items, outcomes))
            self.on_done()

    def _run(self, name: str, items: list[Pending]) -> list[tuple[bool, Any]]:
        try:
            calls = [Call(name, [self.images.patch(h[0], h[1:]) for h in p.patches], p.args) for p in items]
            return [(True, _plain(r)) for r in self.profile.run(name, calls)]
        except Exception as exc:  # noqa: BLE001 — a backend's failure is the primitive's error
            if len(items) > 1:
                return [self._run(name, [p])[0] for p in items]
            message = str(exc) if isinstance(exc, PrimitiveError) else f"{name}: {exc.__class__.__name__}: {exc}"
            return [(False, " ".join(message.split())[:400])]
