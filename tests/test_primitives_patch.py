"""ImagePatch geometry (ViperGPT / ViReP names and bottom-left coordinates), helpers, laziness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from viprog.primitives import ImagePatch, ImageRef, PrimitiveError, coerce_to_numeric, distance, set_transport

REF = ImageRef("img", 100, 80)


def test_whole_image_patch_spans_the_image() -> None:
    p = ImagePatch(REF)
    assert (p.left, p.lower, p.right, p.upper, p.width, p.height) == (0, 0, 100, 80, 100, 80)


def test_crop_coordinates_are_relative_to_the_patch() -> None:
    inner = ImagePatch(REF, 10, 20, 60, 70).crop(5, 5, 15, 25)
    assert (inner.left, inner.lower, inner.right, inner.upper) == (15, 25, 25, 45)


def test_area_is_width_times_height() -> None:
    assert ImagePatch(REF, 10, 20, 40, 30).area == 30 * 10


@pytest.mark.parametrize(("method", "expected"), [
    ("crop_left_of_bbox", (0, 0, 30, 80)),
    ("crop_right_of_bbox", (50, 0, 100, 80)),
    ("crop_above_bbox", (0, 40, 100, 80)),
    ("crop_below_bbox", (0, 0, 100, 10)),
])
def test_crop_beside_bbox_keeps_the_side_asked_for(method: str, expected: tuple[int, ...]) -> None:
    p = getattr(ImagePatch(REF), method)(30, 10, 50, 40)
    assert (p.left, p.lower, p.right, p.upper) == expected


def test_crop_beside_a_box_outside_the_patch_is_empty_not_inverted() -> None:
    p = ImagePatch(REF, 40, 0, 60, 80).crop_left_of_bbox(10, 0, 20, 10)
    assert p.width == 0 and p.left == 40


def test_from_bounding_box_flips_top_left_annotations_to_bottom_left() -> None:
    p = ImagePatch.from_bounding_box(REF, {"x": 10, "y": 5, "w": 20, "h": 10})
    assert (p.left, p.lower, p.right, p.upper) == (10, 65, 30, 75)
    assert p.box_xyxy() == [10, 5, 30, 15]


def test_from_bounding_box_accepts_a_list_like_the_dict() -> None:
    a = ImagePatch.from_bounding_box(REF, [3, 4, 5, 6])
    b = ImagePatch.from_bounding_box(REF, {"x": 3, "y": 4, "w": 5, "h": 6})
    assert a.handle() == b.handle()


def test_distance_is_zero_for_overlapping_patches_and_edge_gap_otherwise() -> None:
    a, b, c = ImagePatch(REF, 0, 0, 10, 10), ImagePatch(REF, 5, 5, 20, 20), ImagePatch(REF, 13, 14, 20, 20)
    assert distance(a, b) == 0
    assert distance(a, c) == pytest.approx(5.0)


def test_coerce_to_numeric_reads_the_first_number() -> None:
    assert coerce_to_numeric("about 1,200 apples and 3 pears") == 1200.0


def test_primitive_without_a_server_is_a_primitive_error() -> None:
    set_transport(None)
    with pytest.raises(PrimitiveError, match="no primitive server"):
        ImagePatch(REF).find("cat")


def test_best_image_match_with_return_index_gives_an_int() -> None:
    from viprog.primitives import FUNCTIONS

    set_transport(lambda name, patches, args, kwargs: 1 if args[-1] else list(patches[1][1:]))
    try:
        patches = [ImagePatch(REF, 0, 0, 10, 10), ImagePatch(REF, 20, 20, 40, 40)]
        assert FUNCTIONS["best_image_match"](patches, ["x"], return_index=True) == 1
        assert FUNCTIONS["best_image_match"](patches, ["x"]).handle() == patches[1].handle()
    finally:
        set_transport(None)


LAZY = """
import json, sys
import viprog.primitives as P
from viprog.primitives.apidoc import api_section
p = P.ImagePatch(P.ImageRef("i", 64, 64)).crop(0, 0, 32, 32)
profiles = [P.get_profile(name) for name in ("neural", "shapes", "scene-graph")]
api_section()
heavy = ["torch", "transformers", "cv2", "ultralytics", "open_clip", "skimage", "PIL"]
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


def test_importing_primitives_and_building_patches_and_profiles_loads_no_model_library() -> None:
    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


SANDBOXED = """
def execute_command(image):
    p = ImagePatch(image)
    box = ImagePatch.from_bounding_box(image, {"x": 10, "y": 5, "w": 20, "h": 10})
    left = p.crop_left_of_bbox(box.left, box.lower, box.right, box.upper)
    above = p.crop_above_bbox(box.left, box.lower, box.right, box.upper)
    return [box.area, left.right, above.lower, p.llm_query is not None]
"""


def test_virep_geometry_runs_inside_the_sandbox() -> None:
    import numpy as np

    from viprog.executor import Executor, Job

    with Executor("shapes", workers=1) as executor:
        result = executor.run(Job(SANDBOXED, image_id="img", image=np.zeros((80, 100, 3), np.uint8)))
    assert result.ok, result.error
    assert result.answer == [200, 10, 75, True]
