"""Profiles: the backends that implement primitives next to the pixels.

A profile is a class registered in `PROFILES` (`neural`, `shapes`, `scene-graph`, or a
user's). It implements a primitive by defining a method of the primitive's name that
takes a batch, `list[Call]`, and returns one JSON-able result per call (boxes as
`[left, lower, right, upper]` in absolute ImagePatch coordinates). Models are loaded
lazily, on first call; constructing a profile loads nothing. A primitive that neither
the profile nor a generic implementation provides raises `PrimitiveError` naming the
profile. A profile with several models says which model kind answers each primitive
(`model_kinds`), so that a cluster can hold each kind in a process, and a GPU, of its own.

`build_profile(name, options)` is the one way a profile is made from its name and its
options (the `--profile-options` JSON): the run's process, and each Ray model actor that
builds its own copy, go through it.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from viprog.errors import UsageError
from viprog.primitives.patch import PrimitiveError
from viprog.primitives.spec import SPECS, get_spec
from viprog.registry import Registry

log = logging.getLogger(__name__)

PROFILES: Registry[type[Profile]] = Registry("profile", group="viprog.profiles")


@dataclass
class PatchData:
    """A patch as the server sees it: the full image's pixels, the box, the annotations."""

    image_id: str
    image: np.ndarray  # H x W x 3 uint8 RGB, row 0 at the top
    box: tuple[int, int, int, int]  # left, lower, right, upper (origin bottom-left)
    meta: Mapping[str, Any] = field(default_factory=dict)  # e.g. the image's scene graph

    @cached_property
    def pixels(self) -> np.ndarray:
        """The crop's pixels (H' x W' x 3 uint8)."""
        left, lower, right, upper = self.box
        height = self.image.shape[0]
        return self.image[height - upper:height - lower, left:right]

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """The box as (x0, y0, x1, y1), origin top-left."""
        left, lower, right, upper = self.box
        height = self.image.shape[0]
        return (left, height - upper, right, height - lower)


@dataclass
class Call:
    """One primitive request: the patch(es) it is about and its bound arguments."""

    primitive: str
    patches: Sequence[PatchData]
    args: tuple[Any, ...] = ()

    @property
    def patch(self) -> PatchData:
        return self.patches[0]


class Profile:
    """Base class of primitive backends. Subclasses set `name` and define batch methods."""

    name: ClassVar[str] = "base"
    #: primitives this profile knowingly leaves out (listed by `viprog primitives`)
    unsupported: ClassVar[frozenset[str]] = frozenset()
    #: primitive → the kind of model that answers it (e.g. find → "detector"); empty: one
    #: model, or none. A profile that fills it takes `kinds` in `preflight`.
    model_kinds: ClassVar[Mapping[str, str]] = {}

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.device = device
        self.options = options

    def preflight(self, kinds: Collection[str] | None = None) -> None:
        """Load (or check) every model this profile is configured with (only those of
        `kinds`, see `model_kinds`, when given), so that a run stops before its first round
        when one cannot be had. Raises `PrimitiveError` naming the model and what to do.
        Profiles without models have nothing to check."""

    def supports(self, primitive: str) -> bool:
        if primitive in self.unsupported:
            return False
        return callable(getattr(self, primitive.replace("-", "_"), None)) or SPECS.get(primitive, (None, None))[1] is not None

    def run(self, primitive: str, calls: list[Call]) -> list[Any]:
        """Answer a batch of calls to one primitive (the PrimitiveServer's entry point)."""
        method = getattr(self, primitive, None) if primitive not in self.unsupported else None
        if callable(method):
            results = method(calls)
        else:
            spec = get_spec(primitive)
            impl = SPECS[primitive][1]
            if impl is None:
                raise PrimitiveError(f"primitive {primitive!r} is not available in profile {self.name!r}")
            results = impl(calls) if spec.batched else [impl(c.patch if spec.owner == "patch" else c.patches, *c.args) for c in calls]
        results = list(results)
        if len(results) != len(calls):
            raise PrimitiveError(f"profile {self.name!r} returned {len(results)} results for {len(calls)} {primitive!r} calls")
        return results


def get_profile(name: str, **options: Any) -> Profile:
    """Instantiate the profile registered as `name` (loads no model)."""
    return PROFILES.get(name)(**options)


def parse_profile_options(options: str | Mapping[str, Any] | None, flag: str = "--profile-options") -> dict[str, Any]:
    """`--profile-options` (or the option `flag`): a JSON object (or a mapping already) → keyword options."""
    if options is None or options == "":
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    try:
        value = json.loads(options)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc.msg} at character {exc.pos}); give an object "
                         """such as '{"device": "cuda", "batch_size": 64}'""") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object of option names, not {type(value).__name__}")
    return value


def profile_option_names(cls: type[Profile]) -> list[str]:
    """The named keyword parameters of a profile's constructor (its own and its bases')."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                names.append(p.name)
    return names


def build_profile(name: str, options: str | Mapping[str, Any] | None = None, *, device: str = "cpu",
                  preflight: bool = True) -> Profile:
    """The primitive profile `name` with `options` (the device follows `device` unless the
    options name one), its models loaded now when `preflight`: a model that cannot load is
    a `UsageError` naming it, before any program runs."""
    cls = PROFILES.get(name)
    opts = parse_profile_options(options)
    known = profile_option_names(cls)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise UsageError(f"profile {name!r} has no option {unknown[0]!r}; its options: {', '.join(known)}")
    profile = cls(**{"device": device, **opts})
    if preflight:
        load_models(profile)
    return profile


def load_models(profile: Profile, kinds: Collection[str] | None = None) -> None:
    """`profile.preflight(kinds)`, timed and logged; a model that cannot load is a `UsageError`."""
    start = time.perf_counter()
    try:
        profile.preflight() if kinds is None else profile.preflight(kinds)
    except PrimitiveError as exc:
        raise UsageError(f"{exc} (set it with --profile-options)") from None
    log.info("profile %s%s ready on %s (%.1f s)", profile.name, f" ({', '.join(kinds)})" if kinds else "",
             profile.device, time.perf_counter() - start)
