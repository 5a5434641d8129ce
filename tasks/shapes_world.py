"""The shapes world's scenes: seeded sampling, PIL rendering, GQA-format scene graphs.

Why a generated world: it is the embedded default task — it needs no download, its
scene graphs are exact (so the `scene-graph` profile separates program errors from
perception errors), and its pixels are simple enough for the classic-vision `shapes`
profile to perceive. Everything follows the lead's pinned vocabulary
(`viprog.primitives.vocab`): flat filled shapes on a plain light background, no
overlaps and ≥ 4 px gaps, sizes `small` (14–18 px across) and `large` (26–34 px) on the
default 128 px canvas (scaled with the canvas on other sizes).

Determinism: a scene is a pure function of `(seed, split, index)` through
`random.Random`, and rendering uses no anti-aliasing and no randomness, so the same
settings give the same PNG bytes on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import numpy as np

from viprog.primitives.vocab import COLORS, PALETTE, SHAPES

#: bump when the generator's output changes for the same settings (it is in the cache key)
GENERATOR_VERSION = 5
SIZE_RANGES: dict[str, tuple[int, int]] = {"small": (14, 18), "large": (26, 34)}
GAP = 4  # minimum free pixels between two objects' boxes
BORDER = 2  # minimum free pixels between an object and the image edge
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")


@dataclass(frozen=True)
class WorldConfig:
    """Settings of a generated world; its digest names the cache folder.

    The default sizes (train 2000 / val 300 / test 500 questions, 5 per image, so 460
    images) generate in a few seconds on one core and give every question type ~35 test
    questions: enough to measure ≥ 90 % per type to within a few points.
    """

    seed: int = 0
    image_size: int = 128
    min_objects: int = 3
    max_objects: int = 6
    #: 1: references use at most one relation; 2: chains ("the star above the circle left of ...")
    level: int = 1
    questions: dict[str, int] = field(default_factory=lambda: {"train": 2000, "val": 300, "test": 500})
    questions_per_image: int = 5
    refexps_per_image: int = 2
    captions_per_image: int = 1
    #: centres closer than this (px) along an axis are neither left/right nor above/below
    margin: int = 6

    @classmethod
    def hard(cls, seed: int = 0) -> WorldConfig:
        """A harder world: 6–9 objects (more distractors, more duplicates) and relation
        chains of depth 2 ("the star above the circle to the left of the red square")."""
        return cls(seed=seed, min_objects=6, max_objects=9, level=2)

    def digest(self) -> str:
        data = asdict(self) | {"version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def images_in(self, split: str) -> int:
        return math.ceil(self.questions[split] / self.questions_per_image)


@dataclass(frozen=True)
class Obj:
    """One object: its words, its colour and its tight box (pixels, origin top-left)."""

    id: str
    shape: str
    color: str
    size: str
    x: int
    y: int
    w: int
    h: int
    rgb: tuple[int, int, int]
    diameter: int  # the size "across" it was drawn at

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True)
class Scene:
    image_id: str
    width: int
    height: int
    background: int
    objects: tuple[Obj, ...]


@cache
def shape_mask(shape: str, diameter: int) -> np.ndarray:
    """The filled shape as a tight boolean mask (rows top to bottom), without anti-aliasing."""
    from PIL import Image, ImageDraw

    s = diameter
    img = Image.new("L", (s + 2, s + 2), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, s - 1, s - 1], fill=255)
    elif shape == "triangle":
        h = round(s * 0.87)
        draw.polygon([((s - 1) / 2, 0), (0, h - 1), (s - 1, h - 1)], fill=255)
    elif shape == "star":
        r_out, r_in, c = (s - 1) / 2, (s - 1) / 2 * 0.45, (s - 1) / 2
        points = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((c + r * math.cos(angle), c + r * math.sin(angle)))
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.asarray(img) > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _clear(box: tuple[int, int, int, int], placed: list[Obj]) -> bool:
    x, y, w, h = box
    return all(x + w + GAP <= o.x or o.x + o.w + GAP <= x or y + h + GAP <= o.y or o.y + o.h + GAP <= y
               for o in placed)


def sample_scene(cfg: WorldConfig, split: str, index: int) -> Scene:
    """The `index`-th scene of `split`: a few objects from a small per-image palette of
    shapes and colours (so duplicates, counts and relational references occur), placed
    without overlap by rejection sampling."""
    rng = random.Random(f"{cfg.seed}/{split}/{index}")
    size = cfg.image_size
    scale = size / 128  # object sizes are pinned at 128 px and scale with the canvas
    shapes = rng.sample(SHAPES, rng.randint(2, len(SHAPES)))
    colors = rng.sample(COLORS, rng.randint(2, 5))
    target = rng.randint(cfg.min_objects, cfg.max_objects)
    placed: list[Obj] = []
    for _attempt in range(target * 60):
        if len(placed) == target:
            break
        shape, color, sz = rng.choice(shapes), rng.choice(colors), rng.choice(("small", "large"))
        lo, hi = SIZE_RANGES[sz]
        diameter = rng.randint(round(lo * scale), round(hi * scale))
        mask = shape_mask(shape, diameter)
        h, w = mask.shape
        if w + 2 * BORDER > size or h + 2 * BORDER > size:
            continue
        x, y = rng.randint(BORDER, size - BORDER - w), rng.randint(BORDER, size - BORDER - h)
        if not _clear((x, y, w, h), placed):
            continue
        rgb = tuple(int(np.clip(v + rng.randint(-12, 12), 0, 255)) for v in PALETTE[color])
        placed.append(Obj(str(len(placed)), shape, color, sz, x, y, w, h, rgb, diameter))  # type: ignore[arg-type]
    return Scene(f"{split}{index:05d}", size, size, rng.randint(235, 245), tuple(placed))


def render(scene: Scene) -> Any:
    """The scene as a PIL RGB image: a plain background and flat filled shapes."""
    from PIL import Image

    pixels = np.full((scene.height, scene.width, 3), scene.background, dtype=np.uint8)
    for o in scene.objects:
        mask = shape_mask(o.shape, o.diameter)
        pixels[o.y:o.y + o.h, o.x:o.x + o.w][mask] = o.rgb
    return Image.fromarray(pixels, "RGB")


def relation(a: Obj, b: Obj, margin: float) -> set[str]:
    """The clear spatial relations of `a` to `b` (centres at least `margin` px apart)."""
    out = set()
    if b.cx - a.cx >= margin:
        out.add("to the left of")
    if a.cx - b.cx >= margin:
        out.add("to the right of")
    if b.cy - a.cy >= margin:
        out.add("above")
    if a.cy - b.cy >= margin:
        out.add("below")
    return out


def ambiguous(a: Obj, b: Obj, rel: str, margin: float) -> bool:
    """True when `rel` between a and b is too close to call (centres within `margin`)."""
    d = a.cx - b.cx if rel in ("to the left of", "to the right of") else a.cy - b.cy
    return abs(d) < margin


def scene_graph(scene: Scene, margin: float) -> dict[str, Any]:
    """The scene in GQA's `sceneGraphs.json` per-image format."""
    objects = {}
    for a in scene.objects:
        rels = [{"name": r, "object": b.id} for b in scene.objects if b is not a
                for r in RELATIONS if r in relation(a, b, margin)]
        objects[a.id] = {"name": a.shape, "x": a.x, "y": a.y, "w": a.w, "h": a.h,
                         "attributes": [a.color, a.size], "relations": rels}
    return {"width": scene.width, "height": scene.height, "objects": objects}
