"""`ImagePatch`: the API that programs see, as a handle.

Programs are written against ViperGPT's `ImagePatch` (same names, same meanings, same
coordinates: `left, lower, right, upper` in pixels with the origin at the *bottom-left*
of the image, so `upper > lower` and "above" means a larger `vertical_center`). Here an
ImagePatch holds no pixels: it is an `ImageRef` (image id + size) plus a box. Geometry
runs where the program runs; every model-backed method is a request sent through the
process's *transport* to the PrimitiveServer, which holds the pixels and the models.

The model-backed methods are not written here: they are generated from the primitive
specs (`primitives/spec.py`), so a newly registered primitive becomes a method at once,
in the parent and, from the same plain-data spec, inside the sandbox workers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from viprog.primitives.spec import REQUIRED, PrimitiveSpec, on_register


class PrimitiveError(Exception):
    """A primitive failed or does not exist in the active profile (error kind `primitive`)."""


@dataclass(frozen=True)
class ImageRef:
    """Handle to an image held by the PrimitiveServer: its id and its size in pixels."""

    id: str
    width: int
    height: int


#: transport(primitive, patches, args, kwargs) -> JSON-able result. Patches are
#: `(image_id, left, lower, right, upper)` tuples. Set by the executor's worker.
Transport = Callable[[str, list[tuple[Any, ...]], tuple[Any, ...], dict[str, Any]], Any]
_transport: Transport | None = None


def set_transport(transport: Transport | None) -> None:
    """Route this process's primitive calls through `transport` (None: no server)."""
    global _transport
    _transport = transport


def _call(name: str, patches: Sequence[ImagePatch], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _transport is None:
        raise PrimitiveError(f"primitive {name!r} called with no primitive server (run programs through the Executor)")
    return _transport(name, [p.handle() for p in patches], args, kwargs)


class ImagePatch:
    """A box on the image: the whole picture, or one object that find returned.

    Attributes
    ----------
    left, lower, right, upper : int
        Where the box's edges lie, in pixels of the whole image counted from its
        bottom-left corner: upper > lower, and y grows upwards.
    width, height : int
    horizontal_center, vertical_center : float
        The box's middle. Compare them between two patches: a smaller horizontal_center
        is further left, a larger vertical_center is higher up (above).
    """

    def __init__(self, image: ImageRef | ImagePatch, left: float | None = None, lower: float | None = None,
                 right: float | None = None, upper: float | None = None) -> None:
        """A patch of `image` with the given edges, or all of it when none is given."""
        if isinstance(image, ImagePatch):
            image = image.image
        if not isinstance(image, ImageRef):
            raise TypeError("ImagePatch(image, ...) needs the image given to execute_command")
        self.image = image
        if left is None and lower is None and right is None and upper is None:
            left, lower, right, upper = 0, 0, image.width, image.height
        if None in (left, lower, right, upper):
            raise ValueError("ImagePatch needs all four of left, lower, right, upper, or none")
        self.left = int(max(0, min(left, image.width)))
        self.lower = int(max(0, min(lower, image.height)))
        self.right = int(max(self.left, min(right, image.width)))
        self.upper = int(max(self.lower, min(upper, image.height)))
        self.width = self.right - self.left
        self.height = self.upper - self.lower
        self.horizontal_center = (self.left + self.right) / 2
        self.vertical_center = (self.lower + self.upper) / 2

    # -- geometry: runs where the program runs ----------------------------------------
    def crop(self, left: int, lower: int, right: int, upper: int) -> ImagePatch:
        """The sub-box of this patch with these edges, measured from this patch's own
        bottom-left corner (crop(0, 0, width, height // 2) is its lower half)."""
        return ImagePatch(self.image, self.left + left, self.lower + lower, self.left + right, self.lower + upper)

    def overlaps_with(self, left: int, lower: int, right: int, upper: int) -> bool:
        """Whether this patch and the box with these edges (whole-image pixels) share any
        point; boxes that only touch count."""
        return self.left <= right and self.right >= left and self.lower <= upper and self.upper >= lower

    @property
    def area(self) -> int:
        """How many pixels the box covers: width * height (compare sizes with it)."""
        return self.width * self.height

    @classmethod
    def from_bounding_box(cls, image: ImageRef | ImagePatch, bounding_box: dict[str, float] | Sequence[float]) -> ImagePatch:
        """The patch of `image` for a box written as annotations write it: a dict
        {"x", "y", "w", "h"} or a list [x, y, w, h], in pixels from the top-left corner
        (as COCO and GQA do)."""
        ref = image.image if isinstance(image, ImagePatch) else image
        if isinstance(bounding_box, dict):
            x, y, w, h = (bounding_box[k] for k in ("x", "y", "w", "h"))
        else:
            x, y, w, h = bounding_box
        return cls(ref, x, ref.height - (y + h), x + w, ref.height - y)

    def crop_left_of_bbox(self, left: int, lower: int, right: int, upper: int) -> ImagePatch:
        """What of this patch lies left of the box with these edges (whole-image pixels)."""
        return ImagePatch(self.image, self.left, self.lower, max(self.left, min(left, self.right)), self.upper)

    def crop_right_of_bbox(self, left: int, lower: int, right: int, upper: int) -> ImagePatch:
        """What of this patch lies right of the box with these edges (whole-image pixels)."""
        return ImagePatch(self.image, min(self.right, max(right, self.left)), self.lower, self.right, self.upper)

    def crop_above_bbox(self, left: int, lower: int, right: int, upper: int) -> ImagePatch:
        """What of this patch lies above the box with these edges (whole-image pixels)."""
        return ImagePatch(self.image, self.left, min(self.upper, max(upper, self.lower)), self.right, self.upper)

    def crop_below_bbox(self, left: int, lower: int, right: int, upper: int) -> ImagePatch:
        """What of this patch lies below the box with these edges (whole-image pixels)."""
        return ImagePatch(self.image, self.left, self.lower, self.right, max(self.lower, min(lower, self.upper)))

    def handle(self) -> tuple[Any, ...]:
        """The plain-data handle sent to the PrimitiveServer: (image id, left, lower, right, upper)."""
        return (self.image.id, self.left, self.lower, self.right, self.upper)

    def box_xyxy(self) -> list[int]:
        """The box as [x0, y0, x1, y1] with the origin at the top-left (annotation convention)."""
        h = self.image.height
        return [self.left, h - self.upper, self.right, h - self.lower]

    def to_json(self) -> dict[str, Any]:
        """How a returned patch crosses back to the parent: plain data, never a pickle."""
        return {"type": "ImagePatch", "image_id": self.image.id, "left": self.left, "lower": self.lower,
                "right": self.right, "upper": self.upper, "box": self.box_xyxy()}

    def __repr__(self) -> str:
        return f"ImagePatch(left={self.left}, lower={self.lower}, right={self.right}, upper={self.upper})"


# -- helpers that need no model (ViperGPT's module-level functions) --------------------
def distance(patch_a: ImagePatch | float, patch_b: ImagePatch | float) -> float:
    """The gap in pixels between the borders of two patches (0 when they touch or
    overlap); for two numbers, how far apart they are.

    Example:
        # Query: the circle closest to the blue square
        def execute_command(image):
            image_patch = ImagePatch(image)
            square_patch = image_patch.find("blue square")[0]
            return min(image_patch.find("circle"), key=lambda patch: distance(patch, square_patch))
    """
    if isinstance(patch_a, ImagePatch) and isinstance(patch_b, ImagePatch):
        dx = max(patch_a.left - patch_b.right, patch_b.left - patch_a.right, 0)
        dy = max(patch_a.lower - patch_b.upper, patch_b.lower - patch_a.upper, 0)
        return math.hypot(dx, dy)
    return abs(float(patch_a) - float(patch_b))  # type: ignore[arg-type]


def bool_to_yesno(bool_answer: bool) -> str:
    """"yes" for True and "no" for False: how a program answers a yes/no question."""
    return "yes" if bool_answer else "no"


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def coerce_to_numeric(string: str | float) -> float:
    """The first number written in `string`, as a float ("about 12 cars" gives 12.0)."""
    if isinstance(string, (int, float)):
        return float(string)
    match = _NUMBER.search(str(string).replace(",", ""))
    if match is None:
        raise ValueError(f"no number in {string!r}")
    return float(match.group())


# -- model-backed methods, generated from specs ---------------------------------------
def _bind(spec: PrimitiveSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    names = [n for n, _ in spec.params]
    if len(args) > len(names):
        raise TypeError(f"{spec.name}() takes {len(names)} arguments but {len(args)} were given")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"{spec.name}() got an unexpected keyword argument {key!r}")
        if key in values:
            raise TypeError(f"{spec.name}() got multiple values for argument {key!r}")
        values[key] = value
    out = []
    for n, default in spec.params:
        if n in values:
            out.append(values[n])
        elif default is REQUIRED:
            raise TypeError(f"{spec.name}() missing required argument {n!r}")
        else:
            out.append(default)
    return tuple(out)


def _convert(spec: PrimitiveSpec, image: ImageRef, result: Any) -> Any:
    if spec.returns == "patches":
        return [ImagePatch(image, *box) for box in result]
    if spec.returns == "patch" and isinstance(result, (list, tuple)):  # else e.g. an index (return_index=True)
        return ImagePatch(image, *result)
    return result


def make_primitive(spec: PrimitiveSpec | dict[str, Any]) -> Callable[..., Any]:
    """Build the callable programs use for `spec`: an ImagePatch method or a function.

    Accepts a spec's `to_json()` form too, which is how sandbox workers receive them.
    """
    if isinstance(spec, dict):
        required = set(spec["required"])
        spec = PrimitiveSpec(name=spec["name"], signature=spec["signature"], doc=spec["doc"],
                             params=tuple((n, REQUIRED if n in required else d) for n, d in spec["params"]),
                             returns=spec["returns"], owner=spec["owner"])
    s = spec
    if s.owner == "patch":
        def method(self: ImagePatch, *args: Any, **kwargs: Any) -> Any:
            return _convert(s, self.image, _call(s.name, [self], _bind(s, args, kwargs), {}))

        fn: Callable[..., Any] = method
    else:
        def function(list_patches: Sequence[ImagePatch], *args: Any, **kwargs: Any) -> Any:
            patches = list(list_patches)
            if not patches or not all(isinstance(p, ImagePatch) for p in patches):
                raise TypeError(f"{s.name}() needs a non-empty list of ImagePatch objects")
            return _convert(s, patches[0].image, _call(s.name, patches, _bind(s, args, kwargs), {}))

        fn = function
    fn.__name__ = fn.__qualname__ = s.name
    fn.__doc__ = s.doc
    return fn


#: module-level primitives (owner="function"), e.g. best_image_match; filled from specs.
FUNCTIONS: dict[str, Callable[..., Any]] = {}


def install(spec: PrimitiveSpec | dict[str, Any]) -> None:
    """Make `spec` callable from programs in this process."""
    fn = make_primitive(spec)
    owner = spec.owner if isinstance(spec, PrimitiveSpec) else spec["owner"]
    if owner == "patch":
        setattr(ImagePatch, fn.__name__, fn)
    else:
        FUNCTIONS[fn.__name__] = fn


on_register(install)
