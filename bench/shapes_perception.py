"""How well the `shapes` profile perceives the shapes world: per-object detection precision
and recall, and colour / shape / size accuracy of the detected objects, on generated images.

Why: the `shapes` profile's perception errors bound what any program can score under it;
this puts a number on them. Detections are matched one-to-one to annotated objects by box
IoU >= 0.5. Rows: the default world (128 px), its hard preset (6–9 objects), the world on a
256 px canvas, the world recoloured onto a dark background, and "off-world" images drawn
here with OpenCV (`draw_off_world`: other palette, background, shapes, sizes, image size,
rotation and anti-aliasing — settings the profile was not written for).

    python bench/shapes_perception.py [--images 500]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from viprog.primitives.backends.shapes import segment
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


OFF_PALETTE: dict[str, tuple[int, int, int]] = {"pink": (255, 105, 180), "cyan": (0, 200, 200),
                                                "white": (250, 250, 250), "brown": (139, 69, 19),
                                                "yellow": (255, 255, 0), "green": (0, 128, 0)}
OFF_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "pentagon", "hexagon", "rectangle", "ellipse")


def _polygon(shape: str, cx: float, cy: float, d: float, rot: float) -> np.ndarray:
    if shape == "rectangle":
        import cv2

        return cv2.boxPoints(((cx, cy), (d, d / 2), math.degrees(rot)))
    corners = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "star": 10}[shape]
    radius = [d / 2 * (math.sqrt(2) if shape == "square" else 1.0)] * corners
    if shape == "star":
        radius = [d / 2 if k % 2 == 0 else d / 2 * 0.45 for k in range(corners)]
    angles = [rot + 2 * math.pi * k / corners for k in range(corners)]
    return np.array([(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radius, angles)])


def draw_off_world(rng: np.random.Generator, size: int = 200, objects: int = 5, background: tuple[int, int, int] = (30, 30, 40),
                   antialias: bool = True) -> tuple[np.ndarray, list[dict[str, object]]]:
    """An image the world generator would not make: OFF_PALETTE colours and OFF_SHAPES,
    rotated and anti-aliased, 20–28 px (small) or 40–60 px (large) across, on `background`.
    Returns the pixels and the objects ({"shape", "color", "size", "box": x0, y0, x1, y1})."""
    import cv2

    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = background
    placed: list[dict[str, object]] = []
    for _ in range(objects * 60):
        if len(placed) == objects:
            break
        size_word = str(rng.choice(["small", "large"]))
        d = int(rng.integers(20, 29) if size_word == "small" else rng.integers(40, 61))
        shape, color = str(rng.choice(OFF_SHAPES)), str(rng.choice(list(OFF_PALETTE)))
        layer = np.zeros_like(pixels)
        cx, cy, rot = rng.uniform(d, size - d), rng.uniform(d, size - d), rng.uniform(0, 2 * math.pi)
        line = cv2.LINE_AA if antialias else cv2.LINE_8
        if shape == "circle":
            cv2.circle(layer, (int(cx), int(cy)), d // 2, (255, 255, 255), -1, line)
        elif shape == "ellipse":
            cv2.ellipse(layer, (int(cx), int(cy)), (d // 2, d // 4), math.degrees(rot), 0, 360, (255, 255, 255), -1, line)
        else:
            cv2.fillPoly(layer, [np.round(_polygon(shape, cx, cy, d, rot)).astype(np.int32)], (255, 255, 255), line)
        alpha = layer[..., :1].astype(np.float32) / 255
        ys, xs = np.nonzero(alpha[..., 0])
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if box[0] < 2 or box[1] < 2 or box[2] > size - 2 or box[3] > size - 2 or any(
                not (box[2] + 4 <= b[0] or b[2] + 4 <= box[0] or box[3] + 4 <= b[1] or b[3] + 4 <= box[1])
                for b in (o["box"] for o in placed)):  # type: ignore[misc]
            continue
        rgb = np.clip(np.array(OFF_PALETTE[color]) + rng.integers(-12, 13, 3), 0, 255)
        pixels[:] = (pixels * (1 - alpha) + rgb * alpha).astype(np.uint8)
        placed.append({"shape": shape, "color": color, "size": size_word, "box": box})
    return pixels, placed


def dark_background(pixels: np.ndarray, background: int) -> np.ndarray:
    out = pixels.copy()
    out[(pixels == background).all(-1)] = (25, 30, 45)
    return out


Truth = list[tuple[str, str, str, tuple[int, int, int, int]]]  # (shape, colour, size, box) per object


def world_images(cfg: WorldConfig, images: int, dark: bool = False) -> Iterator[tuple[np.ndarray, Truth]]:
    for index in range(images):
        scene = sample_scene(cfg, "test", index)
        pixels = np.asarray(render(scene))
        if dark:
            pixels = dark_background(pixels, scene.background)
        yield pixels, [(o.shape, o.color, o.size, (o.x, o.y, o.x + o.w, o.y + o.h)) for o in scene.objects]


def off_world_images(images: int) -> Iterator[tuple[np.ndarray, Truth]]:
    rng = np.random.default_rng(0)
    for _ in range(images):
        pixels, objects = draw_off_world(rng)
        yield pixels, [(o["shape"], o["color"], o["size"], o["box"]) for o in objects]  # type: ignore[misc]


def measure(samples: Iterable[tuple[np.ndarray, Truth]], images: int, label: str = "") -> dict[str, float]:
    """Detection precision / recall (IoU >= 0.5, one-to-one) and attribute accuracy."""
    tp = fp = fn = 0
    right = {"color": 0, "shape": 0, "size": 0}
    start = time.perf_counter()
    for pixels, truth in tqdm(samples, total=images, desc=label, leave=False):
        blobs = segment(pixels)
        unmatched = list(blobs)
        for shape, color, size, box in truth:
            best = max(unmatched, key=lambda b: _iou(b.box, box), default=None)
            if best is None or _iou(best.box, box) < 0.5:
                fn += 1
                continue
            unmatched.remove(best)
            tp += 1
            right["color"] += best.color == color
            right["shape"] += best.shape == shape
            right["size"] += best.size == size
        fp += len(unmatched)
    seconds = time.perf_counter() - start
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "objects": tp + fn,
            **{k: v / max(tp, 1) for k, v in right.items()}, "ms_per_image": 1000 * seconds / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    n = args.images
    rows = [("world 128px", world_images(WorldConfig(), n)), ("hard (6-9 objects)", world_images(WorldConfig.hard(), n)),
            ("world 256px", world_images(WorldConfig(image_size=256), n)),
            ("world, dark background", world_images(WorldConfig(), n, dark=True)),
            ("off-world (drawn)", off_world_images(n))]
    print(f"{'setting':<24} {'objects':>7} {'precision':>9} {'recall':>7} {'colour':>7} {'shape':>7} {'size':>7} "
          f"{'ms/img':>7}")
    for label, samples in rows:
        m = measure(samples, n, label)
        print(f"{label:<24} {m['objects']:>7} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['color']:>7.4f} "
              f"{m['shape']:>7.4f} {m['size']:>7.4f} {m['ms_per_image']:>7.2f}")


if __name__ == "__main__":
    main()
