"""`viprog primitives` and `viprog tasks`: what is registered, without loading models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from viprog.errors import UsageError
from viprog.primitives import PROFILES, all_specs
from viprog.primitives.apidoc import api_section
from viprog.tasks import TASKS
from viprog.tasks.stats import print_stats


@dataclass
class PrimitivesConfig:
    """List the primitives and, per profile, whether it implements them."""

    api: bool = False
    """Print the prompt's API section (generated from signatures and docstrings) instead."""
    task: str | None = None
    """With --api: the API section as this task restricts it."""


def primitives_main(cfg: PrimitivesConfig) -> int:
    if cfg.api:
        print(api_section(task=cfg.task))
        return 0
    specs = all_specs()
    profiles = {}
    for name in PROFILES.names():
        try:
            profiles[name] = PROFILES.get(name)
        except ImportError as exc:  # a third-party profile whose package is broken
            print(f"# profile {name!r} cannot be imported: {exc}")
    width = max(len(s.name) for s in specs)
    print(f"{'primitive':<{width}}  " + "  ".join(profiles))
    for spec in specs:
        marks = ["yes" if cls(device="cpu").supports(spec.name) else "-" for cls in profiles.values()]
        print(f"{spec.name:<{width}}  " + "  ".join(f"{m:<{len(p)}}" for m, p in zip(marks, profiles)))
    print()
    for name in profiles:
        print(f"{name}: {PROFILES.meta(name).get('help', '')}")
    return 0


@dataclass
class TasksConfig:
    """List the registered tasks, or describe one."""

    name: tyro.conf.Positional[Annotated[str | None, tyro.conf.arg(metavar="TASK")]] = None
    """A task to describe (e.g. `shapes`)."""
    stats: bool = False
    """With a task name: print its splits' sizes, question-type and answer distributions
    and the majority-answer baseline."""
    data_dir: str | None = None
    """The task's data folder (tasks that read a dataset from disk)."""


def tasks_main(cfg: TasksConfig) -> int:
    if cfg.name is None:
        if cfg.stats:
            raise UsageError("--stats needs a task name, e.g. `viprog tasks shapes --stats`")
        width = max(map(len, TASKS.names()), default=0)
        for name in TASKS.names():
            cls = TASKS.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:<{width}}  profile={cls.default_profile:<12} {doc}")
        return 0
    cls = TASKS.get(cfg.name)
    if not cfg.stats:
        print((cls.__doc__ or cfg.name).strip())
        return 0
    print_stats(cls(data_dir=cfg.data_dir))
    return 0
