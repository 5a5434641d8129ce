"""A small seeded world of flat coloured shapes, the data of the REINFORCE demos.

Why its own generator (and not tasks/shapes_world): the demos need per-pixel and
per-instance ground truth (semantic maps, instance ids, tight boxes) at 32×32, produced
in milliseconds with NumPy alone, and must not change when the question-answering world
changes. Circles, squares and triangles (classes 0, 1, 2) are placed without overlap on
a plain background; the same seed always yields the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

#: Colours of the colorization world, in groups of equal luma (0.299 R + 0.587 G + 0.114 B),
#: so a grey image cannot tell them apart: the grey of each group is the most frequent.
PALETTE: np.ndarray = np.array([
    [118, 118, 118], [199, 79, 104], [47, 157, 107], [77, 117, 227],  # background group
    [170, 170, 170], [254, 129, 159], [97, 212, 147], [234, 164, 34],  # light group
    [70, 70, 70], [152, 32, 52], [21, 101, 41], [59, 59, 159],  # dark group
], dtype=np.uint8)
GROUP_OF_COLOUR: np.ndarray = np.repeat(np.arange(3), 4)
SHAPE_COLOUR_PRIOR: np.ndarray = np.array([0.4, 0.2, 0.2, 0.2])  # grey first, then three hues


@dataclass(frozen=True)
class Shapes:
    """A batch of shape scenes. `boxes[i]` is (n_i, 4) `[x0, y0, x1, y1]` pixels (x1, y1
    exclusive), `labels[i]` (n_i,) class ids; `instances` is 0 on background and k+1 on
    the k-th shape; `semantic` is 0 on background and class+1 on shapes; `colours` is the
    palette index of every pixel (the colorization target; -1 in the default world)."""

    images: np.ndarray  # (B, H, W, 3) uint8
    semantic: np.ndarray  # (B, H, W) int64
    instances: np.ndarray  # (B, H, W) int64
    colours: np.ndarray  # (B, H, W) int64
    boxes: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def grey(self) -> np.ndarray:
        """Luma of the images, (B, H, W) float32 in [0, 1]."""
        return (self.images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def _mask(kind: int, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == 0:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind == 1:
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    turns = [angle + k * 2 * np.pi / 3 for k in range(3)]
    corners = [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in turns]
    inside = np.ones((size, size), dtype=bool)
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        inside &= (bx - ax) * (yy - ay) - (by - ay) * (xx - ax) >= 0
    return inside


def generate(n: int, seed: int, size: int = 32, max_shapes: int = 3, min_radius: float = 4.0,
             max_radius: float = 8.0, colorization: bool = False, noise: float = 0.0) -> Shapes:
    """`n` scenes of 1..`max_shapes` non-overlapping shapes.

    Default colours: a random light background and random saturated shape colours
    (colour says nothing about the class). `colorization=True`: colours from `PALETTE`,
    background from the first group, each shape from a random group with
    `SHAPE_COLOUR_PRIOR` over its members. `noise`: std of Gaussian pixel noise (0–255
    scale) added to the rendered images; masks and boxes stay exact.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    semantic = np.zeros((n, size, size), np.int64)
    instances = np.zeros((n, size, size), np.int64)
    colours = np.zeros((n, size, size), np.int64)
    boxes, labels = [], []
    for i in range(n):
        bg = int(rng.choice(4, p=SHAPE_COLOUR_PRIOR)) if colorization else -1
        images[i] = PALETTE[bg] if colorization else rng.integers(190, 256, size=3)
        colours[i] = bg
        occupied = np.zeros((size, size), bool)
        boxes_i, labels_i = [], []
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            for _attempt in range(20):
                kind = int(rng.integers(3))
                r = rng.uniform(min_radius, max_radius)
                cx, cy = rng.uniform(r, size - r, size=2)
                m = _mask(kind, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
                grown = m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1)
                if m.sum() >= 12 and not (grown & occupied).any():
                    break
            else:
                continue
            occupied |= m
            if colorization:
                c = 4 * int(rng.integers(1, 3)) + int(rng.choice(4, p=SHAPE_COLOUR_PRIOR))
                images[i][m], colours[i][m] = PALETTE[c], c
            else:
                images[i][m] = rng.integers(0, 160, size=3)
            semantic[i][m] = kind + 1
            instances[i][m] = len(boxes_i) + 1
            ys, xs = np.nonzero(m)
            boxes_i.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels_i.append(kind)
        boxes.append(np.array(boxes_i, np.float64).reshape(-1, 4))
        labels.append(np.array(labels_i, np.int64))
    if noise > 0:
        images = np.clip(images + rng.normal(0, noise, images.shape), 0, 255).astype(np.uint8)
    return Shapes(images, semantic, instances, colours, boxes, labels)
