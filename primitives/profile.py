"""Profiles: the backends that implement primitives next to the pixels.

A profile is a class registered in `PROFILES` (`neural`, `shapes`, `scene-graph`, or a
user's). It implements a primitive by defining a method of the primitive's name that
takes a batch, `list[Call]`, and returns one JSON-able result per call (boxes as
`[left, lower, right, upper]` in absolute ImagePatch coordinates). Models are loaded
lazily, on first call; constructing a profile loads nothing. A primitive that neither
the profile nor a generic implementation provides raises `PrimitiveError` naming the
profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from viprog.primitives.patch import PrimitiveError
from viprog.primitives.spec import SPECS, get_spec
from viprog.registry import Registry

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

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.device = device
        self.options = options

    def preflight(self) -> None:
        """Load (or check) every model this profile is configured with, so that a run
        stops before its first round when one cannot be had. Raises `PrimitiveError`
        naming the model and what to do. Profiles without models have nothing to check."""

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
