"""`shapes`: classic computer vision that really perceives flat shapes in pixels.

Why not read the generator's scene graph: the point of this profile is perception whose
errors are real (a program that is right can still fail on a misread pixel), at CPU cost
of a millisecond per image, with no model. It is also meant to work on flat-shape images
it did not generate (other palettes, backgrounds, sizes, image sizes), so nothing here is
tuned to the world's own lists:

- objects: pixels far (CIELAB distance) from the background colour, estimated from the
  image border, split into 8-connected components; tiny specks are dropped.
- colour: the median colour of the component's interior, named by the nearest of many
  named-colour prototypes (CSS/X11-style, 12 names) by CIEDE2000 distance.
- shape: contour geometry — solidity (stars are concave), fill of the minimum enclosing
  triangle (triangles), fill of the minimum-area rectangle (squares, rectangles), the
  spread of the radius (pentagons, hexagons vs circles, ellipses); rotation invariant.
- size: `large` when the object spans more than `large_across` of the image's shorter
  side (default 22/128: the world's small objects are 14–18 px across, large 26–34).

Every model-free primitive is answered from one segmentation per image, cached by id.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import numpy as np

from viprog.primitives import vocab
from viprog.primitives.backends.objects import MainObjectAnswers
from viprog.primitives.profile import Call, PatchData, Profile

#: named-colour prototypes (sRGB); a colour is named by its nearest prototype in CIELAB
COLOR_PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (220, 20, 60), (178, 34, 34), (200, 30, 30), (139, 0, 0)),
    "orange": ((255, 165, 0), (255, 140, 0), (240, 120, 20)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 220, 60), (230, 200, 30)),
    "green": ((0, 128, 0), (0, 255, 0), (34, 139, 34), (50, 205, 50), (0, 100, 0), (46, 139, 87), (144, 238, 144)),
    "blue": ((0, 0, 255), (0, 0, 139), (65, 105, 225), (30, 144, 255), (100, 149, 237), (0, 0, 128), (70, 130, 180)),
    "purple": ((128, 0, 128), (148, 0, 211), (138, 43, 226), (147, 112, 219), (75, 0, 130), (153, 50, 204)),
    "pink": ((255, 192, 203), (255, 105, 180), (255, 20, 147), (219, 112, 147), (255, 0, 255)),
    "brown": ((139, 69, 19), (160, 82, 45), (165, 42, 42), (120, 80, 40)),
    "cyan": ((0, 255, 255), (0, 128, 128), (64, 224, 208), (0, 206, 209)),
    "black": ((0, 0, 0), (40, 40, 40)),
    "white": ((255, 255, 255), (245, 245, 245)),
    "gray": ((128, 128, 128), (169, 169, 169), (90, 90, 90), (200, 200, 200)),
}


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) → CIELAB float (..., 3) (L in 0..100)."""
    import cv2

    flat = np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(np.shape(rgb))


_PROTO_NAMES = [name for name, protos in COLOR_PROTOTYPES.items() for _ in protos]
_PROTO_RGB = np.array([p for protos in COLOR_PROTOTYPES.values() for p in protos], dtype=np.uint8)


@cache
def _proto_lab() -> np.ndarray:
    return to_lab(_PROTO_RGB)


def color_distances(rgb: Sequence[int]) -> dict[str, float]:
    """CIEDE2000 distance from `rgb` to the nearest prototype of every named colour
    (CIEDE2000 rather than plain CIELAB distance: it keeps blues from reading as purple)."""
    from skimage.color import deltaE_ciede2000

    protos = _proto_lab()
    lab = to_lab(np.array([rgb], dtype=np.uint8))[0]
    dist = deltaE_ciede2000(np.broadcast_to(lab, protos.shape), protos)
    out: dict[str, float] = {}
    for name, d in zip(_PROTO_NAMES, dist):
        out[name] = min(out.get(name, np.inf), float(d))
    return out


def name_color(rgb: Sequence[int]) -> str:
    """The named colour nearest to `rgb`."""
    dist = color_distances(rgb)
    return min(dist, key=dist.__getitem__)


@dataclass(frozen=True)
class Blob:
    """One perceived object: box (x0, y0, x1, y1; origin top-left, exclusive), attributes."""

    box: tuple[int, int, int, int]
    area: int
    rgb: tuple[int, int, int]
    color: str
    shape: str
    across: float
    size: str


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape name, extent across in pixels) of one object's binary mask, from its contour."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 2)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    across = float(max(rw, rh)) + 1.0  # contour runs through pixel centres
    hull = cv2.convexHull(contour)
    area, hull_area = cv2.contourArea(contour), cv2.contourArea(hull)
    if hull_area <= 0 or len(contour) < 5:
        return "square" if mask.sum() >= mask.size * 0.9 else "circle", across
    solidity = area / hull_area
    if solidity < 0.8:
        return "star", across
    tri_area, _ = cv2.minEnclosingTriangle(hull.astype(np.float32))
    if tri_area > 0 and hull_area / tri_area > 0.8:
        return "triangle", across
    rect_fill = hull_area / max(rw * rh, 1e-6)
    aspect = max(rw, rh) / max(min(rw, rh), 1e-6)
    if rect_fill > 0.9:
        return ("square" if aspect < 1.3 else "rectangle"), across
    if across >= 20:
        points = hull.reshape(-1, 2).astype(np.float32)
        centre = points.mean(axis=0)
        boundary = contour.reshape(-1, 2).astype(np.float32)
        radius = np.linalg.norm(boundary - centre, axis=1)
        spread = (radius.max() - radius.min()) / radius.max()
        corners = len(cv2.approxPolyDP(hull, 0.04 * cv2.arcLength(hull, True), True))
        if aspect < 1.2 and corners == 5 and spread > 0.2:
            return "pentagon", across
        if aspect < 1.2 and corners == 6:
            return "hexagon", across
    return ("circle" if aspect < 1.25 else "ellipse"), across


def segment(image: np.ndarray, large_across: float = 22 / 128, threshold: float = 20.0) -> list[Blob]:
    """Perceive the flat objects of an RGB image: background by its border, objects by
    colour distance from it, attributes by contour geometry and named colours."""
    import cv2

    height, width = image.shape[:2]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    background = np.median(border, axis=0)
    lab = to_lab(image)
    distance = np.linalg.norm(lab - to_lab(background.astype(np.uint8)), axis=-1)
    mask = (distance > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = max(8, int(20 * height * width / (128 * 128)))
    blobs = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        component = labels[y:y + h, x:x + w] == k
        interior = cv2.erode(component.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        pixels = image[y:y + h, x:x + w][interior if interior.sum() >= 4 else component]
        rgb = tuple(int(v) for v in np.median(pixels, axis=0))
        shape, across = classify_shape(component)
        size = "large" if across > large_across * min(height, width) else "small"
        blobs.append(Blob((x, y, x + w, y + h), area, rgb, name_color(rgb), shape, across, size))  # type: ignore[arg-type]
    return blobs


def _overlap(box: tuple[int, int, int, int], xyxy: tuple[int, int, int, int]) -> int:
    w = min(box[2], xyxy[2]) - max(box[0], xyxy[0])
    h = min(box[3], xyxy[3]) - max(box[1], xyxy[1])
    return max(w, 0) * max(h, 0)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class ShapesProfile(MainObjectAnswers, Profile):
    """Perceives flat shapes with OpenCV: segmentation, contour geometry, named colours."""

    name: ClassVar[str] = "shapes"
    unsupported: ClassVar[frozenset[str]] = frozenset({"compute_depth", "llm_query"})

    def __init__(self, device: str = "cpu", large_across: float = 22 / 128, threshold: float = 20.0,
                 **options: Any) -> None:
        super().__init__(device, **options)
        self.large_across = large_across
        self.threshold = threshold
        self._cache: OrderedDict[str, list[Blob]] = OrderedDict()

    # -- perception, cached per image ------------------------------------------------------
    def blobs(self, patch: PatchData) -> list[Blob]:
        """The objects of the patch's whole image (segmented once per image id)."""
        key = patch.image_id
        if key not in self._cache:
            self._cache[key] = segment(patch.image, self.large_across, self.threshold)
            if len(self._cache) > 512:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def inside(self, patch: PatchData) -> list[Blob]:
        """Objects at least half inside the patch, left to right."""
        box = patch.box_xyxy
        found = [b for b in self.blobs(patch) if 2 * _overlap(box, b.box) >= (b.box[2] - b.box[0]) * (b.box[3] - b.box[1])]
        return sorted(found, key=lambda b: (b.box[0], b.box[1]))

    def main_object(self, patch: PatchData) -> Blob | None:
        """The object a crop is about: the one it covers most."""
        box = patch.box_xyxy
        scored = [(_overlap(box, b.box), b.area, b) for b in self.blobs(patch)]
        scored = [s for s in scored if s[0] > 0]
        return max(scored, key=lambda s: s[:2])[2] if scored else None

    @staticmethod
    def fits(phrase: vocab.Phrase, blob: Blob) -> bool:
        return not phrase.unknown and phrase.matches(blob.shape, blob.color, blob.size)

    @staticmethod
    def score(text: str, blob: Blob) -> float:
        """How well `text` describes `blob`: +1 per matching word, colours by CIEDE2000 distance."""
        phrase = vocab.parse(text)
        total = -0.5 * len(phrase.unknown)
        if phrase.shape is not None:
            total += 1.0 if blob.shape in vocab.COVERS.get(phrase.shape, (phrase.shape,)) else -1.0
        if phrase.size is not None:
            total += 1.0 if blob.size == phrase.size else -1.0
        if phrase.color is not None:  # named colour decides; distance breaks ties between wrong colours
            total += (1.0 if blob.color == phrase.color else -1.0) - color_distances(blob.rgb)[phrase.color] / 1000.0
        return total

    def _box(self, patch: PatchData, blob: Blob) -> list[int]:
        x0, y0, x1, y1 = blob.box
        px0, py0, px1, py1 = patch.box_xyxy
        x0, y0, x1, y1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
        height = patch.image.shape[0]
        return [x0, height - y1, x1, height - y0]

    # -- primitives --------------------------------------------------------------------------
    def find(self, calls: list[Call]) -> list[list[list[int]]]:
        out = []
        for call in calls:
            phrase = vocab.parse(call.args[0])
            out.append([self._box(call.patch, b) for b in self.inside(call.patch) if self.fits(phrase, b)])
        return out

    def exists(self, calls: list[Call]) -> list[bool]:
        return [bool(boxes) for boxes in self.find(calls)]

    def verify_property(self, calls: list[Call]) -> list[bool]:
        out = []
        for call in calls:
            name, prop = call.args
            phrase = vocab.parse(name)
            candidates = [b for b in self.inside(call.patch) if self.fits(phrase, b)]
            main = self.main_object(call.patch)
            if not candidates and main is not None:
                candidates = [main]  # the object is presupposed to be there
            wanted = vocab.parse(prop)
            known = wanted.shape or wanted.color or wanted.size
            out.append(bool(known) and any(self.fits(wanted, b) for b in candidates))
        return out

    def answer(self, patch: PatchData, question: str) -> str:
        """Answer an attribute question about the patch's object with one lower-case word."""
        words = _words(question)
        text = " ".join(words)
        if text.startswith("how many"):
            phrase = vocab.parse(" ".join(w for w in words[2:] if w not in ("are", "there", "is", "in", "image")))
            return str(sum(self.fits(phrase, b) for b in self.inside(patch)))
        main = self.main_object(patch)
        if " or " in f" {text} ":
            head = text.split(" or ")
            options = [head[0].split()[-1], *(part.split()[0] for part in head[1:] if part.split())]
            return max(options, key=lambda o: self.score(o, main)) if main is not None else options[0]
        if words and words[0] in ("is", "are", "does", "do", "can"):
            asked = vocab.parse(" ".join(words[1:]))  # words the vocabulary does not know are ignored
            known = vocab.Phrase(asked.shape, asked.color, asked.size)
            return "yes" if main is not None and known != vocab.Phrase() and self.fits(known, main) else "no"
        if main is None:
            return "nothing"
        kind = vocab.asked_attribute(words)
        return main.color if kind == "color" else main.size if kind == "size" else main.shape
