"""Batched vs one-at-a-time primitive calls on the `neural` profile (tiny models, CPU).

Why: the PrimitiveServer gathers calls from all running programs so a profile answers
them in one batch; this measures what that buys. 64 crops of one image go through CLIP
(`best_text_match`) and the detectors (`find`, OWLv2 and YOLO at a 64 px input, the
crops' size), once as one batch of
64 calls and once as 64 batches of one, side by side in one run (after a warm-up), and
the ratio is printed. Target: >= 4x.

    python bench/primitives.py [--crops 64] [--repeats 3] [--models DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np

from viprog.primitives import Call, PatchData, get_profile
from viprog.primitives.backends.tiny import build_tiny_models, tiny_yolo


def crops(n: int, seed: int = 0) -> list[PatchData]:
    """n random crops (24–64 px) of one 256 px image."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    out = []
    for _ in range(n):
        w, h = rng.integers(24, 65, 2)
        left, lower = rng.integers(0, 256 - w), rng.integers(0, 256 - h)
        out.append(PatchData("image", image, (int(left), int(lower), int(left + w), int(lower + h))))
    return out


def timed(profile: Any, primitive: str, calls: list[Call], batched: bool, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds for answering all calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        if batched:
            profile.run(primitive, calls)
        else:
            for call in calls:
                profile.run(primitive, [call])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=None, help="folder for the tiny models (default: a temporary one)")
    args = parser.parse_args()
    folder = args.models or tempfile.mkdtemp(prefix="viprog-tiny-")
    options = build_tiny_models(folder, llm=False, depth=False)
    patches = crops(args.crops)
    rows = [
        ("CLIP best_text_match", "best_text_match", {}, [(["a red circle", "a blue square", "a star"],)]),
        ("OWLv2 find", "find", {}, [("circle",)]),
        ("YOLO find (imgsz 64)", "find", {"detector": tiny_yolo(folder), "yolo_imgsz": 64}, [("object",)]),
    ]
    print(f"{'primitive':<22} {'crops':>5} {'one-at-a-time s':>16} {'batched s':>10} {'speed-up':>9}")
    for label, primitive, overrides, (call_args,) in rows:
        base = {k: v for k, v in options.items() if k not in ("llm", "depth")}
        profile = get_profile("neural", **(base | overrides), depth=None, batch_size=args.crops)
        calls = [Call(primitive, [p], call_args) for p in patches]
        profile.run(primitive, calls[:2])  # warm-up: load the model, first-call setup
        single = timed(profile, primitive, calls, batched=False, repeats=args.repeats)
        batched = timed(profile, primitive, calls, batched=True, repeats=args.repeats)
        print(f"{label:<22} {len(calls):>5} {single:>16.3f} {batched:>10.3f} {single / batched:>8.1f}x")
    print(f"tiny models in {folder}")


if __name__ == "__main__":
    main()
