"""The `scene-graph` profile answers from GQA-format annotations, free text included."""

from __future__ import annotations

import numpy as np
import pytest

from viprog.primitives import PrimitiveError
from viprog.primitives.local import run_unsandboxed
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene, scene_graph

H = 100
GQA = {"width": 200, "height": H, "objects": {
    "1": {"name": "Tennis racket", "x": 10, "y": 10, "w": 30, "h": 20, "attributes": ["white", "large"], "relations": []},
    "2": {"name": "cars", "x": 120, "y": 50, "w": 40, "h": 30, "attributes": ["dark blue", "parked"], "relations": []},
    "3": {"name": "car", "x": 60, "y": 60, "w": 30, "h": 20, "attributes": ["red"], "relations": []},
}}
PIXELS = np.zeros((H, 200, 3), np.uint8)


def run(program: str, graph: dict = GQA) -> object:
    return run_unsandboxed(program, PIXELS, "scene-graph", meta={"scene_graph": graph})


@pytest.mark.parametrize(("phrase", "count"), [("car", 2), ("cars", 2), ("red car", 1), ("dark blue car", 1),
                                               ("racket", 1), ("white tennis racket", 1), ("green car", 0),
                                               ("object", 3), ("dog", 0)])
def test_find_matches_normalised_names_and_attributes(phrase: str, count: int) -> None:
    assert run(f"def execute_command(image):\n    return len(ImagePatch(image).find({phrase!r}))") == count


def test_find_inside_a_crop_only_sees_objects_mostly_inside_it() -> None:
    program = "def execute_command(image):\n    return len(ImagePatch(image).crop(0, 0, 100, 100).find('car'))"
    assert run(program) == 1


def test_found_box_is_the_annotation_in_bottom_left_coordinates() -> None:
    program = "def execute_command(image):\n    p = ImagePatch(image).find('red car')[0]\n    return [p.left, p.lower, p.right, p.upper]"
    assert run(program) == [60, H - 80, 90, H - 60]


def test_simple_query_reads_the_colour_attribute_of_the_cropped_object() -> None:
    program = "def execute_command(image):\n    return ImagePatch(image).find('racket')[0].simple_query('What color is it?')"
    assert run(program) == "white"


def test_simple_query_answers_a_multi_word_colour_as_annotated() -> None:
    program = "def execute_command(image):\n    return ImagePatch(image).find('cars')[1].simple_query('What colour is this?')"
    assert run(program) == "dark blue"


def test_verify_property_uses_the_attributes() -> None:
    program = ("def execute_command(image):\n    c = ImagePatch(image).find('red car')[0]\n"
               "    return [c.verify_property('car', 'red'), c.verify_property('car', 'blue')]")
    assert run(program) == [True, False]


def test_best_text_match_prefers_the_option_naming_the_object() -> None:
    program = "def execute_command(image):\n    return ImagePatch(image).find('racket')[0].best_text_match(['car', 'racket'])"
    assert run(program) == "racket"


def test_an_image_without_a_scene_graph_is_a_primitive_error() -> None:
    with pytest.raises(PrimitiveError, match="scene graph"):
        run_unsandboxed("def execute_command(image):\n    return ImagePatch(image).exists('car')", PIXELS, "scene-graph")


PROGRAM = """
def execute_command(image):
    p = ImagePatch(image)
    out = []
    for o in p.find('object'):
        out.append([o.left, o.lower, o.right, o.upper, o.simple_query('what color is this?'),
                    o.simple_query('what shape is this?'), o.simple_query('what size is it?'),
                    o.simple_query('What shape is the large blue object?'),
                    o.simple_query('What color is the small square?'), o.simple_query('How big is it?')])
    return sorted(out)
"""


@pytest.mark.parametrize("index", range(5))
def test_scene_graph_and_shapes_profiles_agree_on_world_images(index: int) -> None:
    scene = sample_scene(WorldConfig(), "test", index)
    pixels, graph = np.asarray(render(scene)), scene_graph(scene, margin=6)
    from_graph = run_unsandboxed(PROGRAM, pixels, "scene-graph", meta={"scene_graph": graph})
    assert from_graph == run_unsandboxed(PROGRAM, pixels, "shapes") and len(from_graph) == len(scene.objects)
    # a question that names other properties still gets the property it asks for
    assert all(row[7] == row[5] and row[8] == row[4] and row[9] == row[6] for row in from_graph)
