"""`RayExecutor`: the sandboxed executor spread over a Ray cluster, same jobs, same results.

Why Ray and not our own cluster code: Ray already places actors on nodes, moves objects
between them, and restarts an actor (and re-runs the tasks it had) when its node is lost.
We only decide what an actor holds:

- a *sandbox actor* (one per node by default, spread over the nodes) holds an ordinary
  local `Executor` — the restricted compile, the worker processes under their rlimits and
  kernel layers, the watchdog — so a program runs in exactly the sandbox it runs in on one
  machine. Its PrimitiveServer batches and caches as usual, but its profile is a stand-in
  that sends each batch to
- the *model actor* of the primitive's model kind (detector, CLIP, VQA ... as the profile
  declares them; one actor for a profile without kinds), which builds its own copy of the
  profile from the profile's class and options, loads that kind's models once, asks for
  its own `num_gpus`, and merges the batches that arrive from every sandbox actor while a
  batch runs into the next one, with a result cache shared by all of them.

Every actor's constructor takes plain data only (names, options, settings), so Ray can
restart any of them; the model actors' handles travel with each chunk. The executor is
meant to stay open for a whole run: the models load when it opens, not per rollout.
Images go into Ray's object store once per image id (pixels and annotations together);
jobs carry only the reference, and an actor reads the image from its node's store.
A chunk of jobs is one actor task; our jobs are idempotent, so when a node dies Ray runs
its chunks again on a restarted actor and every job still gets exactly one result. Restarts
and retries are bounded (`RESTARTS`, `TASK_RETRIES`): a chunk or a model call that kills its actor every
time ends the rollout with one error naming the actor, instead of being retried forever.
Before any actor is created the executor checks that some node offers the CPUs and GPUs
each actor asks for (an actor Ray cannot place would wait with no error), and the models
must load within `load_timeout` seconds.

What differs from the local `Executor`: result sizes for `max_bytes` are measured as the
result's JSON (the local executor counts the worker's message), and `seconds` is the
time inside the sandbox actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

import ray
from ray.util import ActorPool
from tqdm.auto import tqdm

from viprog.errors import DataError, UsageError
from viprog.executor.job import Job
from viprog.executor.lru import ResultCache
from viprog.executor.ordered import InOrder
from viprog.executor.pool import Executor
from viprog.executor.ray_place import ONE_ACTOR, check_placement, cpus_per_model, gpus_per_kind, model_routes, threads
from viprog.executor.result import ExecutionResult, within_budget
from viprog.executor.server import as_rgb
from viprog.images import read_rgb
from viprog.primitives.profile import Call, PatchData, Profile, build_profile, load_models

log = logging.getLogger(__name__)

_IMAGES_HELD = 256  # images a model actor keeps decoded, most recently used
_IMAGE_BYTES = 2**30  # pixels the driver keeps referenced in the object store, most recently used
_CLOSE_SECONDS = 30.0  # how long `close` waits for the sandbox actors to stop their workers
#: how often Ray restarts a lost actor before the run fails
RESTARTS = 3
#: how often Ray re-runs an actor task it lost: more than RESTARTS, as one lost node can cost several (each
#: try made before the node is declared dead fails); an actor out of restarts fails its tasks at once anyway
TASK_RETRIES = 4 * RESTARTS
_PROBE_SECONDS = 3.0  # how long `connect` waits for a cluster's port to answer


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address` (`auto`: the one running on this machine; None: the
    `RAY_ADDRESS` environment variable, else a Ray started here for this process).
    Returns whether this call started the connection (so the caller should shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        probe(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError) as exc:  # ValueError: an address Ray cannot parse
        raise UsageError(f"could not join a Ray cluster at {address or 'RAY_ADDRESS'} ({exc}); start one with "
                         "`ray start --head` or give its host:port with --ray-address") from None
    log.info("joined the Ray cluster at %s (%d nodes)", address or "a new local instance",
             sum(1 for n in ray.nodes() if n["Alive"]))
    return True


def probe(address: str, timeout: float = _PROBE_SECONDS) -> None:
    """A `UsageError` within `timeout` seconds when nothing listens at a `host:port` (or
    `ray://host:port`) address. Ray's own connect retries for minutes there: its knobs
    (`RAY_gcs_server_port_wait_time_s` for the attempts, `RAY_py_gcs_connect_timeout_s`
    for each one) still take tens of seconds and are read when Ray is imported. `auto`
    and addresses without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"nothing answers at the Ray address {address} ({exc.strerror or exc}); start a head there "
                         f"with `ray start --head --port={port}`, or give --ray-address auto on a machine of a "
                         "running cluster") from None


class _RemoteModels(Profile):
    """The sandbox actor's profile: answers a batch by asking the model actor of its primitive."""

    def __init__(self, name: str, route: Mapping[str, str]) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]  # the real profile's, for identical error messages
        self.route = dict(route)  # primitive → model kind
        self.hosts: dict[str, Any] = {}  # model kind → its actor, given with each chunk
        self.refs: dict[str, Any] = {}  # image id → its object in the store
        self.lost: str | None = None  # why a model actor is gone for good, once it is

    def supports(self, primitive: str) -> bool:
        return primitive in self.route

    def run(self, primitive: str, calls: list[Call]) -> list[Any]:
        payload = [(c.patches[0].image_id, [p.box for p in c.patches], list(c.args)) for c in calls]
        refs = {image_id: self.refs[image_id] for image_id, _, _ in payload}
        kind = self.route[primitive]
        try:
            return ray.get(self.hosts[kind].run.remote(primitive, refs, payload))
        except ray.exceptions.RayTaskError as exc:  # the profile's own exception, as the local server sees it
            raise exc.cause from None
        except ray.exceptions.RayActorError as exc:  # restarted RESTARTS times: the chunk fails (`SandboxHost.run`)
            self.lost = f"the {kind} model actor died {RESTARTS + 1} times ({one_line(exc)})"
            raise


class ModelHost:
    """A model actor: the profile's models of one kind (all of them for a profile without
    kinds), built here from the profile's class and options; batches merged across sandbox
    actors, one cache.

    The class travels by reference (its module is imported here, which also registers a
    profile that a user's module adds to `PROFILES`); a built `Profile` travels whole."""

    def __init__(self, profile: type[Profile] | Profile, options: dict[str, Any], kind: str, batch_size: int,
                 cache: bool, threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # as Ray sets it, also where the node's environment had one
        import torch  # the models' runtime; it may have read the variable before

        torch.set_num_threads(threads)
        self.profile = profile(**options) if isinstance(profile, type) else profile
        self.kind, self.batch_size, self.use_cache = kind, max(1, batch_size), cache
        self.images: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.cache = ResultCache()
        self.waiting: list[tuple[str, dict[str, Any], list[Any], asyncio.Future[Any]]] = []
        self.draining = False
        self.stats = {"requests": 0, "batches": 0, "cache_hits": 0}

    def load(self) -> int:
        """Load this actor's models now (`Profile.preflight`); returns the actor's process id."""
        load_models(self.profile, None if self.kind == ONE_ACTOR else [self.kind])
        return os.getpid()

    def counters(self) -> dict[str, int]:
        """The requests, merged batches and cache hits served, and the compute threads used."""
        import torch

        return {**self.stats, "threads": torch.get_num_threads(), "omp_threads": int(os.environ["OMP_NUM_THREADS"])}

    async def run(self, primitive: str, refs: dict[str, Any], payload: list[Any]) -> list[Any]:
        """One sandbox actor's batch; it joins the batches of others waiting meanwhile."""
        self.stats["requests"] += 1
        for image_id, ref in refs.items():
            if image_id not in self.images:
                self.images[image_id] = await ref
            self.images.move_to_end(image_id)
        images = {i: self.images[i] for i in refs}
        while len(self.images) > _IMAGES_HELD:
            self.images.popitem(last=False)
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((primitive, images, payload, done))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self.waiting:
                primitive = self.waiting[0][0]  # the oldest request's primitive first
                group, rest, calls = [], [], 0
                for entry in self.waiting:
                    if entry[0] == primitive and (not group or calls + len(entry[2]) <= self.batch_size):
                        group.append(entry)
                        calls += len(entry[2])
                    else:
                        rest.append(entry)
                self.waiting = rest
                outcomes = await asyncio.to_thread(self._compute, primitive, group)
                for (_, _, _, done), (ok, value) in zip(group, outcomes):
                    done.set_result(value) if ok else done.set_exception(value)
        finally:
            self.draining = False

    def _compute(self, primitive: str, group: list[Any]) -> list[tuple[bool, Any]]:
        """Answer each entry of `group`; a failing merged batch is retried entry by entry,
        so the entry that fails gets the exception (its sandbox then retries call by call)."""
        self.stats["batches"] += 1
        try:
            answers = self._answer(primitive, [(images, call) for _, images, payload, _ in group for call in payload])
        except Exception as exc:  # noqa: BLE001 — the profile's failure goes back to who asked
            if len(group) == 1:
                return [(False, exc)]
            return [self._compute(primitive, [entry])[0] for entry in group]
        out, start = [], 0
        for _, _, payload, _ in group:
            out.append((True, answers[start:start + len(payload)]))
            start += len(payload)
        return out

    def _answer(self, primitive: str, calls: list[tuple[dict[str, Any], Any]]) -> list[Any]:
        keys = [(primitive, image_id, json.dumps(boxes), json.dumps(args, sort_keys=True))
                for _, (image_id, boxes, args) in calls]
        answers: list[Any] = [None] * len(calls)
        missing = []
        for i, key in enumerate(keys):
            hit, answer = self.cache.lookup(key) if self.use_cache else (False, None)
            if hit:
                self.stats["cache_hits"] += 1
                answers[i] = answer
            else:
                missing.append(i)
        if missing:
            batch = []
            for i in missing:
                images, (image_id, boxes, args) = calls[i]
                image = images[image_id]
                batch.append(Call(primitive, [PatchData(image_id, image["pixels"], tuple(b), image["meta"])
                                              for b in boxes], tuple(args)))
            for i, answer in zip(missing, self.profile.run(primitive, batch)):
                answers[i] = answer
                if self.use_cache:
                    self.cache.put(keys[i], answer)
        return answers


class SandboxHost:
    """A sandbox actor: a local `Executor` whose primitives are answered by the model actors.

    Its constructor takes only plain data (the profile's name, which kind answers each
    primitive, the executor's settings); the model actors' handles come with each chunk.
    A handle among an actor's constructor arguments is a reference Ray cannot rebuild
    when it restarts the actor (Ray issue 53727, and its error line at every start)."""

    def __init__(self, name: str, route: dict[str, str], settings: dict[str, Any]) -> None:
        self.models = _RemoteModels(name, route)
        self.executor = Executor(self.models, **settings)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, hosts: dict[str, Any], chunk: list[tuple[int, str, str, Any, str | None]],
            ) -> list[tuple[int, ExecutionResult]]:
        """Run a chunk of (index, program, image id, image ref or the image's error, query),
        asking `hosts` (model kind → actor) for its primitives; results by index."""
        self.models.hosts = hosts
        pixels, out, runs = {}, [], []
        for entry in chunk:
            index, _, image_id, ref, _ = entry
            if isinstance(ref, str):  # the driver could not read the image: its jobs fail, as locally
                out.append((index, ExecutionResult.failure("primitive", ref)))
                continue
            self.models.refs[image_id] = ref
            if image_id not in pixels:
                pixels[image_id] = ray.get(ref)["pixels"]
            runs.append(entry)
        jobs = [Job(program, image_id, pixels[image_id], query=query) for _, program, image_id, _, query in runs]
        out += [(runs[i][0], result) for i, result in self.executor.run_iter(jobs)]
        self.models.refs.clear()
        if self.models.lost:  # its primitives failed for a lost actor, not for the programs: fail the chunk
            raise RuntimeError(self.models.lost)
        return out

    def close(self) -> None:
        self.executor.close()


class RayExecutor:
    """The `Executor` interface (`run`, `run_many`, `run_iter`, a context manager) over Ray.

    profile: a profile name, built by each model actor from its class and `profile_options`
    (its models load there, once, and nowhere else), or a built `Profile`, which is
    pickled into each model actor. There is one model actor per model kind of the profile
    (`Profile.model_kinds`: detector, CLIP, VQA ... for `neural`), one for a profile
    without kinds. model_gpus: the GPUs each model actor asks for, one number for all or
    per kind (e.g. `{"vqa": 1, "detector": 0.5}`); None: on CUDA the kinds share one GPU.
    model_cpus: the CPUs each model actor reserves, which are also its compute threads
    (None: 1 for models on the CPU, 0 on CUDA). address: the cluster (see `connect`).
    sandboxes: sandbox actors (None: one per alive node), each with `workers` worker
    processes and `sandbox_cpus` of Ray's CPUs. chunk: jobs per actor task (the unit Ray
    retries). load_timeout: seconds the models may take to load. Every other keyword is
    the local `Executor`'s, used by each sandbox actor. Opening it loads the models (an
    actor the cluster cannot place, or a model that cannot load, is a `UsageError` here,
    with everything it had created closed); keep it open across the rollouts of a run.
    """

    run = Executor.run
    run_many = Executor.run_many

    def __init__(self, profile: str | Profile = "shapes", *, address: str | None = None, sandboxes: int | None = None,
                 workers: int = 2, sandbox_cpus: float = 1.0, model_gpus: float | Mapping[str, float] | None = None,
                 model_cpus: float | None = None, chunk: int = 256, profile_options: dict[str, Any] | None = None,
                 batch_size: int = 32, cache: bool = True, max_run_bytes: int | None = 2**30,
                 load_timeout: float = 900.0, **settings: Any) -> None:
        if chunk < 1 or (sandboxes is not None and sandboxes < 1):
            raise ValueError("chunk and sandboxes must be >= 1")
        # built here without its models (cheap), to check the options and read what it supports
        here = build_profile(profile, profile_options, preflight=False) if isinstance(profile, str) else profile
        made = (type(here), {"device": here.device, **(profile_options or {})}) if isinstance(profile, str) else (
            profile, {})
        routes = model_routes(here)
        kinds = sorted(set(routes.values()))
        gpus, cpus = gpus_per_kind(model_gpus, kinds, here.device), cpus_per_model(model_cpus, here.device)
        self.max_run_bytes, self.chunk = max_run_bytes, chunk
        self.hosts: dict[str, Any] = {}
        self.actors: list[Any] = []
        self._images: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # image id → (its ref, its bytes)
        self._image_bytes, self._busy = 0, False
        self._owns_ray = connect(address)
        try:
            count = sandboxes or sum(1 for n in ray.nodes() if n["Alive"])
            check_placement([*((f"{kind} model actor", cpus, gpus[kind]) for kind in kinds),
                             *(("sandbox actor", sandbox_cpus, 0.0) for _ in range(count))], ray.nodes())
            retry = {"max_restarts": RESTARTS, "max_task_retries": TASK_RETRIES}
            host = ray.remote(ModelHost)
            self.hosts = {kind: host.options(num_cpus=cpus, num_gpus=gpus[kind], **retry).remote(
                *made, kind, batch_size, cache, threads(cpus)) for kind in kinds}
            self.model_pids = self._load(load_timeout)
            settings = {"workers": workers, "batch_size": batch_size, "cache": cache, "max_run_bytes": None,
                        **settings}
            actor = ray.remote(SandboxHost).options(num_cpus=sandbox_cpus, scheduling_strategy="SPREAD", **retry)
            self.actors = [actor.remote(here.name, routes, settings) for _ in range(count)]
        except BaseException:
            self.close()
            raise
        self.pool = ActorPool(self.actors)
        log.info("Ray executor open: %d sandbox actor(s), model actor(s) %s", count,
                 ", ".join(f"{k} ({gpus[k]:g} GPU, {cpus:g} CPU)" for k in kinds))

    def _load(self, timeout: float) -> dict[str, int]:
        """Each model actor's process id once its models loaded; a failure is one `UsageError`."""
        loads = {kind: host.load.remote() for kind, host in self.hosts.items()}
        deadline, pids = time.monotonic() + timeout, {}
        for kind, ref in loads.items():
            try:
                pids[kind] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                raise UsageError(f"the {kind} model actor did not load its models within {timeout:g} s; see "
                                 "`ray status` for a busy cluster, or give a longer load_timeout") from None
            except ray.exceptions.RayTaskError as exc:  # a model that cannot load: the profile's own message
                if isinstance(exc.cause, UsageError):
                    raise exc.cause from None
                raise UsageError(f"the {kind} model actor could not load its models: {one_line(exc.cause)}") from None
            except ray.exceptions.RayActorError as exc:
                raise UsageError(f"the {kind} model actor could not start ({one_line(exc)}); viprog and the "
                                 "profile's module must import on every node of the cluster") from None
        return pids

    def model_stats(self) -> dict[str, dict[str, int]]:
        """Per model kind: the requests, merged batches and cache hits its actor has served,
        and its compute threads."""
        return dict(zip(self.hosts, ray.get([h.counters.remote() for h in self.hosts.values()])))

    def nodes(self) -> list[str]:
        """The Ray node id of each sandbox actor (where it runs now)."""
        return ray.get([a.node.remote() for a in self.actors])

    def run_iter(self, jobs: Iterable[Job], progress: bool | str = False, ordered: bool = False,
                 max_bytes: int | None = None) -> Iterator[tuple[int, ExecutionResult]]:
        """As `Executor.run_iter`: `(index, result)` as chunks finish (in job order when
        `ordered`); jobs are read a chunk at a time as actors have room. An actor lost more
        than `RESTARTS` times ends it with a `UsageError` naming the actor."""
        if self._busy:
            raise RuntimeError("the RayExecutor is running another run_iter: finish or close it first")
        self._busy = True
        bar = tqdm(total=len(jobs) if hasattr(jobs, "__len__") else None, disable=not progress, unit="prog",
                   desc=progress if isinstance(progress, str) else "programs")
        chunks = self._chunks(jobs)
        order = InOrder(2**62, 2**62)
        spent, running = 0, 0
        try:
            while True:
                while running < 2 * len(self.actors):
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    self.pool.submit(lambda actor, value: actor.run.remote(self.hosts, value), chunk)
                    running += 1
                if not running:
                    break
                finished = self._next()
                running -= 1
                bar.update(len(finished))
                for index, result in finished:
                    result, size = within_budget(result, len(result.dumps()), spent, max_bytes)
                    spent += size
                    if ordered:
                        yield from order.add(index, result, 0)
                    else:
                        yield index, result
        finally:
            while self.pool.has_next():  # stopped early: let the chunks in flight finish, unread
                try:
                    self.pool.get_next_unordered()
                except ray.exceptions.RayError:
                    pass
            self._busy = False
            bar.close()

    def _next(self) -> list[tuple[int, ExecutionResult]]:
        try:
            return self.pool.get_next_unordered()
        except ray.exceptions.RayTaskError as exc:  # a sandbox actor failed the chunk: a model actor is lost
            raise UsageError(f"the rollout stopped: {one_line(exc.cause)}; the actor's log is in the node's "
                             "Ray session folder (/tmp/ray/session_latest/logs)") from None
        except ray.exceptions.RayActorError as exc:
            raise UsageError(f"the rollout stopped: a sandbox actor died {RESTARTS + 1} times ({one_line(exc)}); "
                             "see `ray status` and the node's /tmp/ray/session_latest/logs") from None

    def _chunks(self, jobs: Iterable[Job]) -> Iterator[list[Any]]:
        chunk: list[Any] = []
        for index, job in enumerate(jobs):
            chunk.append((index, job.program, job.image_id, self._image_ref(job), job.query))
            if len(chunk) == self.chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _image_ref(self, job: Job) -> Any:
        """The job's image in the object store (or why it cannot be read), put once while the
        executor keeps it: the most recently used images, up to `_IMAGE_BYTES` of pixels."""
        kept = self._images.get(job.image_id)
        if kept is not None:
            self._images.move_to_end(job.image_id)
            return kept[0]
        try:
            pixels = _pixels(job)
            ref, size = ray.put({"pixels": pixels, "meta": dict(job.meta or {})}), int(getattr(pixels, "nbytes", 0))
        except Exception as exc:  # noqa: BLE001 — an unreadable image fails its jobs only
            ref, size = (str(exc) if isinstance(exc, DataError) else f"image {job.image_id!r}: {exc!r}")[:400], 0
        self._images[job.image_id] = (ref, size)
        self._image_bytes += size
        while self._image_bytes > _IMAGE_BYTES and len(self._images) > 1:  # chunks in flight keep theirs alive
            self._image_bytes -= self._images.popitem(last=False)[1][1]
        return ref

    def close(self) -> None:
        """Stop the sandbox actors' workers (waiting at most `_CLOSE_SECONDS`), kill every actor
        and shut down a Ray this executor started; safe after a failed open and when called twice."""
        actors, hosts = self.actors, self.hosts
        self.actors, self.hosts, self._images, self._image_bytes = [], {}, OrderedDict(), 0
        try:
            if actors:
                ray.get([a.close.remote() for a in actors], timeout=_CLOSE_SECONDS)
        except ray.exceptions.RayError as exc:  # a lost actor, or one that does not answer in time
            log.warning("sandbox actors did not close cleanly (%s); killing them", one_line(exc))
        finally:
            try:
                for a in [*actors, *hosts.values()]:
                    ray.kill(a)
            finally:
                if self._owns_ray:
                    self._owns_ray = False
                    ray.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_line(exc: BaseException) -> str:
    """An exception as one short line. Ray's messages carry tracebacks; their last
    `SomeError: message` line says what happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b:", line)]
    return (named[-1] if named else lines[0] if lines else type(exc).__name__)[:300]


def _pixels(job: Job) -> Any:
    source = job.image
    if isinstance(source, (str, os.PathLike)):
        return read_rgb(source)
    return as_rgb(source() if callable(source) else source, job.image_id)
