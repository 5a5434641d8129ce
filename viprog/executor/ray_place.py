"""What each Ray actor of `RayExecutor` asks for, and whether the cluster can give it.

Why a check of our own before creating actors: Ray keeps an actor it cannot place (a model
actor asking for a GPU on a CPU-only cluster, more CPUs than any node has) pending with no
error, so `RayExecutor` would wait forever for its models to load. The cluster's nodes and
their resources are Ray's (`ray.nodes()`); here we only compare them with the asks and turn
a shortfall into one line saying which actor, what it asked, and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from viprog.errors import UsageError
from viprog.primitives.profile import Profile
from viprog.primitives.spec import SPECS

#: the kind of the model actor of a profile that names no kinds (`Profile.model_kinds`)
ONE_ACTOR = "models"


def model_routes(profile: Profile) -> dict[str, str]:
    """Primitive → the kind of model actor that answers it, for every primitive `profile`
    supports (`Profile.model_kinds`; a primitive it does not name, and every primitive of a
    profile without kinds, goes to the one actor `ONE_ACTOR`)."""
    return {name: profile.model_kinds.get(name, ONE_ACTOR) for name in SPECS if profile.supports(name)}


def gpus_per_kind(model_gpus: float | Mapping[str, float] | None, kinds: list[str], device: str) -> dict[str, float]:
    """The GPUs each model actor asks Ray for: `model_gpus` for all, or per kind (kinds it
    leaves out, and every kind when None, share one GPU when the profile's device is CUDA)."""
    share = 1.0 / len(kinds) if str(device).startswith("cuda") and kinds else 0.0
    if model_gpus is None or isinstance(model_gpus, Mapping):
        given = dict(model_gpus or {})
        unknown = sorted(set(given) - set(kinds))
        if unknown:
            raise UsageError(f"model_gpus names {unknown[0]!r}, which is not a model kind of this profile; "
                             f"its kinds: {', '.join(kinds)}")
        return {kind: float(given.get(kind, share)) for kind in kinds}
    return dict.fromkeys(kinds, float(model_gpus))


def cpus_per_model(cpus: float | None, device: str) -> float:
    """The CPUs each model actor reserves (None: 1 when its models run on the CPU, 0 on CUDA).
    Ray sets the actor's OMP_NUM_THREADS to the whole CPUs it holds (at least 1), and the
    actor sets torch's threads to the same number."""
    if cpus is None:
        return 0.0 if str(device).startswith("cuda") else 1.0
    if cpus < 0:
        raise UsageError(f"--ray-model-cpus {cpus:g}: give a number of CPUs >= 0")
    return float(cpus)


def threads(cpus: float) -> int:
    """The compute threads of an actor holding `cpus` CPUs, as Ray counts them for OMP_NUM_THREADS."""
    return max(1, math.floor(cpus))


def check_placement(asks: Sequence[tuple[str, float, float]], nodes: list[dict[str, Any]]) -> None:
    """A `UsageError` unless every (actor, CPUs, GPUs) of `asks` fits on some alive node of
    `nodes` (`ray.nodes()`) and all of them fit in the cluster together."""
    offers = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    most = {r: max((float(o.get(r, 0)) for o in offers), default=0.0) for r in ("CPU", "GPU")}
    total = {r: sum(float(o.get(r, 0)) for o in offers) for r in ("CPU", "GPU")}
    for what, cpus, gpus in asks:
        if not any(float(o.get("CPU", 0)) >= cpus and float(o.get("GPU", 0)) >= gpus for o in offers):
            short, need = ("GPU", gpus) if most["GPU"] < gpus else ("CPU", cpus)
            fix = ("run the models on --device cpu, give a smaller --ray-model-gpus, or add a node with GPUs"
                   if short == "GPU" else "give a smaller --ray-model-cpus or sandbox_cpus, or add a larger node")
            raise UsageError(f"no node of the Ray cluster offers {need:g} {short} for the {what} (its nodes offer "
                             f"at most {most[short]:g}); {fix}")
    for resource, column in (("CPU", 1), ("GPU", 2)):
        asked = sum(ask[column] for ask in asks)
        if asked > total[resource] + 1e-9:
            raise UsageError(f"the Ray executor's actors ask for {asked:g} {resource} together and the cluster has "
                             f"{total[resource]:g}; give fewer sandboxes, a smaller --ray-model-cpus / "
                             "--ray-model-gpus, or add nodes")
