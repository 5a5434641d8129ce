"""One registry class for primitives' backends (profiles), tasks and policies.

Why one class: the three extension points behave the same way for users — a decorator
registers a thing under a name, a `"module:object"` string registers it lazily (nothing
is imported until it is asked for), third-party distributions add entries through an
entry-point group, a duplicate name is an error, and an unknown name is an error that
suggests the closest known names. Registering never loads a model or reads a file.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(Exception):
    """Base class of registry errors (their message is one line, fit for a CLI)."""


class DuplicateNameError(RegistryError):
    """A name was registered twice in the same registry."""


class UnknownNameError(RegistryError, KeyError):
    """A name that is not registered was asked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Entry:
    """One registered name: its object (once resolved) or its lazy target, and metadata."""

    name: str
    target: str | None = None
    obj: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def loaded(self) -> bool:
        return self.obj is not None


def resolve(target: str) -> Any:
    """Import a `"package.module:attr.path"` target and return the object it names."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise RegistryError(f"lazy target {target!r} must look like 'package.module:object'")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """A named collection of things of one kind ("task", "policy", "profile", ...).

    >>> TASKS = Registry("task", group="viprog.tasks")
    >>> @TASKS.register("shapes")
    ... class ShapesTask: ...
    >>> TASKS.add("gqa", "viprog.tasks.gqa:GQATask")   # lazy: imports nothing now
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._entry_points_loaded = group is None

    # -- registering ------------------------------------------------------------------
    def add(self, name: str, target: str | T, **meta: Any) -> None:
        """Register `target` (an object, or a lazy `"module:object"` string) as `name`."""
        if name in self._entries:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str):
            self._entries[name] = Entry(name, target=target, meta=dict(meta))
        else:
            self._entries[name] = Entry(name, obj=target, meta=dict(meta))

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator form of `add`; the name defaults to the object's `name` attribute or
        its `__name__`."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__
            self.add(key, obj, **meta)
            return obj

        return decorator

    def remove(self, name: str) -> None:
        """Forget `name` (tests and interactive sessions re-registering things)."""
        self._entries.pop(name, None)

    # -- looking up ---------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name not in self._entries:  # built-ins win; a clash is not fatal here
                self._entries[ep.name] = Entry(ep.name, target=ep.value, meta={"dist": _dist(ep)})

    def names(self) -> list[str]:
        """All registered names, sorted, entry points included (nothing is imported)."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry:
        """The entry for `name` without resolving it; unknown → `UnknownNameError`."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The object registered as `name`, importing its lazy target on first use."""
        entry = self.entry(name)
        if entry.obj is None:
            assert entry.target is not None
            entry.obj = resolve(entry.target)
        return entry.obj

    def meta(self, name: str) -> dict[str, Any]:
        return self.entry(name).meta

    def unknown_message(self, name: str) -> str:
        """One line: what is unknown, the closest names, and where to see them all."""
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = f"known: {', '.join(known)}" if known else f"no {self.kind}s are registered"
        return f"unknown {self.kind} {name!r}; " + "; ".join(p for p in (hint, listing) if p)


def _dist(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None)
