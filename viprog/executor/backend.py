"""Choosing where programs run: this machine (`local`) or a Ray cluster (`ray`).

Why one function: `selftrain`, `eval` and `viprog.load` all open an executor from the
same two options (`executor`, `ray_address`), and Ray is an optional extra whose absence
must be one line saying what to install, not an ImportError deep in a run.
"""

from __future__ import annotations

from typing import Any

from viprog.errors import UsageError
from viprog.executor.pool import Executor
from viprog.primitives.profile import Profile

EXECUTORS = ("local", "ray")


def make_executor(profile: str | Profile, *, executor: str = "local", ray_address: str | None = None,
                  **settings: Any) -> Any:
    """An `Executor` (local) or a `RayExecutor` (ray; `ray_address` as `ray_backend.connect`
    takes it) with the same `settings`; use it as a context manager."""
    if executor == "local":
        return Executor(profile, **settings)
    if executor != "ray":
        raise UsageError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    try:
        from viprog.executor.ray_backend import RayExecutor
    except ImportError as exc:
        raise UsageError(f"--executor ray needs Ray ({exc}); install it with: pip install 'viprog[dist]'") from None
    return RayExecutor(profile, address=ray_address, **settings)
