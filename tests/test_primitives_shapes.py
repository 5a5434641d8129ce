"""The `shapes` profile perceives pixels: world images, off-world images, ViperGPT-style programs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from viprog.primitives import PrimitiveError
from viprog.primitives.backends.shapes import name_color, segment
from viprog.primitives.local import run_unsandboxed
from viprog.primitives.vocab import PALETTE
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "shapes_perception.py"
    spec = importlib.util.spec_from_file_location("shapes_perception", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def world(index: int) -> tuple[np.ndarray, object]:
    scene = sample_scene(WorldConfig(), "test", index)
    return np.asarray(render(scene)), scene


def test_world_detection_precision_and_recall_are_high() -> None:
    m = BENCH.measure(BENCH.world_images(WorldConfig(), 40), 40)
    assert m["precision"] >= 0.98 and m["recall"] >= 0.98


@pytest.mark.parametrize("attribute", ["color", "shape", "size"])
def test_world_attributes_are_read_from_pixels(attribute: str) -> None:
    m = BENCH.measure(BENCH.world_images(WorldConfig(), 40), 40)
    assert m[attribute] >= 0.97


@pytest.mark.parametrize("attribute", ["recall", "color", "shape", "size"])
def test_off_world_images_other_palette_shapes_background_and_size(attribute: str) -> None:
    m = BENCH.measure(BENCH.off_world_images(30), 30)
    assert m[attribute] >= 0.93


def test_world_on_a_larger_canvas_keeps_sizes_relative() -> None:
    m = BENCH.measure(BENCH.world_images(WorldConfig(image_size=256), 20), 20)
    assert m["size"] >= 0.97 and m["recall"] >= 0.97


@pytest.mark.parametrize("color", sorted(PALETTE))
def test_jittered_world_colours_get_their_names_from_a_broad_table(color: str) -> None:
    rng = np.random.default_rng(0)
    names = [name_color(np.clip(np.array(PALETTE[color]) + rng.integers(-15, 16, 3), 0, 255)) for _ in range(20)]
    assert names.count(color) >= 19


def test_a_blank_image_has_no_objects() -> None:
    assert segment(np.full((64, 64, 3), 240, np.uint8)) == []


def _run(program: str, pixels: np.ndarray) -> object:
    return run_unsandboxed(program, pixels, "shapes")


@pytest.mark.parametrize("noun", ["object", "shape", "thing", "items"])
def test_generic_nouns_match_every_object(noun: str) -> None:
    pixels, scene = world(1)
    n = _run(f"def execute_command(image):\n    return len(ImagePatch(image).find({noun!r}))", pixels)
    assert n == len(scene.objects)


def test_find_with_colour_and_synonym_matches_the_annotated_objects() -> None:
    for index in range(10):
        pixels, scene = world(index)
        obj = scene.objects[0]
        noun = {"circle": "ball", "square": "block", "triangle": "pyramid", "star": "star"}[obj.shape]
        phrase = f"{obj.size} {obj.color} {noun}"
        want = sum((o.shape, o.color, o.size) == (obj.shape, obj.color, obj.size) for o in scene.objects)
        assert _run(f"def execute_command(image):\n    return len(ImagePatch(image).find({phrase!r}))", pixels) == want


def test_an_unknown_noun_finds_nothing() -> None:
    pixels, _ = world(2)
    assert _run("def execute_command(image):\n    return ImagePatch(image).exists('dog')", pixels) is False


def test_found_boxes_use_the_bottom_left_origin() -> None:
    pixels, scene = world(3)
    obj = scene.objects[0]
    program = ("def execute_command(image):\n    p = ImagePatch(image)\n"
               f"    return [(q.left, q.lower, q.right, q.upper) for q in p.find('{obj.color} {obj.shape}')]")
    h = pixels.shape[0]
    assert (obj.x, h - obj.y - obj.h, obj.x + obj.w, h - obj.y) in [tuple(b) for b in _run(program, pixels)]


@pytest.mark.parametrize(("question", "field"), [
    ("What color is this?", "color"), ("What shape is it?", "shape"), ("What size is the object?", "size"),
    # the question names other properties too: the one asked for wins
    ("What shape is the large blue object?", "shape"), ("What color is the small square?", "color"),
    ("What size is the red shape?", "size"), ("How big is it?", "size")])
def test_simple_query_answers_attribute_questions_about_a_crop(question: str, field: str) -> None:
    for index in range(5):
        pixels, scene = world(index)
        obj = scene.objects[-1]
        h = pixels.shape[0]
        program = (f"def execute_command(image):\n    p = ImagePatch(image, {obj.x}, {h - obj.y - obj.h}, "
                   f"{obj.x + obj.w}, {h - obj.y})\n    return p.simple_query({question!r})")
        assert _run(program, pixels) == getattr(obj, field)


def test_how_many_counts_matching_objects() -> None:
    pixels, scene = world(4)
    color = scene.objects[0].color
    want = sum(o.color == color for o in scene.objects)
    program = f"def execute_command(image):\n    return ImagePatch(image).simple_query('How many {color} things are there?')"
    assert _run(program, pixels) == str(want)


def test_verify_property_and_best_text_match_on_a_found_object() -> None:
    pixels, scene = world(5)
    obj = scene.objects[0]
    others = [c for c in PALETTE if c != obj.color]
    program = (f"def execute_command(image):\n    o = ImagePatch(image).find('{obj.color} {obj.shape}')[0]\n"
               f"    return [o.verify_property('{obj.shape}', '{obj.color}'), o.verify_property('{obj.shape}', "
               f"'{others[0]}'), o.best_text_match(['{others[1]} {obj.shape}', '{obj.color} {obj.shape}'])]")
    assert _run(program, pixels) == [True, False, f"{obj.color} {obj.shape}"]


def test_best_image_match_picks_the_described_patch() -> None:
    pixels, scene = world(6)
    target = scene.objects[-1]
    program = ("def execute_command(image):\n    objs = ImagePatch(image).find('object')\n"
               f"    return best_image_match(objs, ['{target.size} {target.color} {target.shape}'], return_index=True)")
    found = _run("def execute_command(image):\n    return [o.to_json()['box'] for o in ImagePatch(image).find('object')]",
                 pixels)
    index = _run(program, pixels)
    assert found[index] == [target.x, target.y, target.x + target.w, target.y + target.h]


def test_a_primitive_the_profile_lacks_is_a_primitive_error_naming_it() -> None:
    pixels, _ = world(0)
    with pytest.raises(PrimitiveError, match="'shapes'"):
        _run("def execute_command(image):\n    return ImagePatch(image).compute_depth()", pixels)
