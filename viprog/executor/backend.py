"""Choosing where programs run: this machine (`local`) or a Ray cluster (`ray`).

Why one module: `selftrain`, `eval` and `viprog.load` all open an executor from the same
options (`executor`, `ray_address`, `ray_model_gpus`, `ray_model_cpus`), and Ray is an optional extra whose
absence must be one line saying what to install, not an ImportError deep in a run.
`open_executor` is the one place that decides where a profile's models load: in this
process for the local executor, inside the Ray model actors (and nowhere else) for Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from viprog.errors import UsageError
from viprog.executor.pool import Executor
from viprog.primitives.profile import Profile, build_profile, parse_profile_options

EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")


def make_executor(profile: str | Profile, *, executor: str = "local", ray_address: str | None = None,
                  **settings: Any) -> Any:
    """An `Executor` (local) or a `RayExecutor` (ray; `ray_address` as `ray_backend.connect`
    takes it) with the same `settings`; use it as a context manager."""
    check_executor(executor)
    if executor == "local":
        return Executor(profile, **settings)
    try:
        from viprog.executor.ray_backend import RayExecutor
    except ImportError as exc:
        raise UsageError(f"--executor ray needs Ray ({exc}); install it with: pip install 'viprog[dist]'") from None
    return RayExecutor(profile, address=ray_address, **settings)


def open_executor(profile: str, options: str | Mapping[str, Any] | None = None, *, device: str = "cpu",
                  executor: str = "local", ray_address: str | None = None, model_gpus: str | None = None,
                  model_cpus: float | None = None, **settings: Any) -> Any:
    """An open executor for the profile named `profile` with `options` (the `--profile-options`
    JSON; its device follows `device` unless it names one). Local: the profile is built and
    its models loaded here. Ray: only the name and options go to the model actors, which
    build and load their own (`model_gpus`: the `--ray-model-gpus` JSON; `model_cpus`:
    `--ray-model-cpus`, each model actor's CPUs and threads)."""
    check_executor(executor)
    if executor == "local":
        return Executor(build_profile(profile, options, device=device), **settings)
    return make_executor(profile, executor="ray", ray_address=ray_address, model_gpus=parse_model_gpus(model_gpus),
                         model_cpus=model_cpus,
                         profile_options={"device": device, **parse_profile_options(options)}, **settings)


def parse_model_gpus(text: str | float | Mapping[str, float] | None) -> float | dict[str, float] | None:
    """`--ray-model-gpus`: a number (GPUs for every model actor) or a JSON object of GPUs per
    model kind, e.g. '{"vqa": 1, "detector": 0.5}'."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text) if isinstance(text, str) and text.strip()[:1] == "{" else text
        gpus = {str(kind): float(n) for kind, n in value.items()} if isinstance(value, Mapping) else float(value)
        if min(gpus.values() if isinstance(gpus, dict) else [gpus], default=0.0) < 0:
            raise ValueError("negative")
        return gpus
    except (TypeError, ValueError):
        raise UsageError(f"--ray-model-gpus {text!r}: give a number, or a JSON object of GPUs per model kind "
                         """such as '{"vqa": 1, "detector": 0.5}'""") from None
