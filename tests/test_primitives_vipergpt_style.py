"""Programs written the way ViperGPT's prompt teaches still run unchanged in our sandbox.

The API section's docstrings are our own text, but the names, signatures and meanings are
ViperGPT's, so a program written for ViperGPT (return annotations, `len(...) == 0` guards,
sorting patches by their centres, `verify_property(name, property)` by position or keyword, `simple_query()` without a question,
`best_image_match(..., return_index=True)`, `coerce_to_numeric` on an answer) must run in
the Executor and give the answer the scene says. The programs are ours, in that style.
"""

from __future__ import annotations

import numpy as np
import pytest

from viprog.executor import Executor, Job
from viprog.primitives.apidoc import api_section
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene

SCENE = sample_scene(WorldConfig(), "test", 7)
PIXELS = np.asarray(render(SCENE))
H = PIXELS.shape[0]
#: an object that its colour and shape alone single out, so find(...)[0] is that object
FIRST = next(o for o in SCENE.objects if sum((p.color, p.shape) == (o.color, o.shape) for p in SCENE.objects) == 1)
LEFTMOST = min(SCENE.objects, key=lambda o: o.cx)
LARGE = [o for o in SCENE.objects if o.size == "large"]
NOT_FIRST_COLOR = next(c for c in ("red", "green", "blue", "yellow") if c != FIRST.color)


def _box(o: object) -> list[int]:
    return [o.x, o.y, o.x + o.w, o.y + o.h]  # type: ignore[attr-defined]


#: (program, the answer the scene's annotations give)
PROGRAMS: list[tuple[str, object]] = [
    (f'''def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    is_first = image_patch.exists("{FIRST.color} {FIRST.shape}")
    is_dog = image_patch.exists("dog")
    return bool_to_yesno(is_first and not is_dog)
''', "yes"),
    ('''def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    object_patches = image_patch.find("object")
    if len(object_patches) == 0:
        return image_patch.simple_query("What color is the leftmost object?")
    object_patches.sort(key=lambda x: x.horizontal_center)
    leftmost = object_patches[0]
    return leftmost.simple_query("What color is this object?")
''', LEFTMOST.color),
    (f'''def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    patches = image_patch.find("{FIRST.color} {FIRST.shape}")
    # the question assumes there is one
    return bool_to_yesno(patches[0].verify_property("{FIRST.shape}", "{NOT_FIRST_COLOR}"))
''', "no"),
    (f'''def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    patch = image_patch.find("{FIRST.color} {FIRST.shape}")[0]
    return patch.best_text_match(["{NOT_FIRST_COLOR}", "{FIRST.color}"])
''', FIRST.color),
    ('''def execute_command(image) -> int:
    image_patch = ImagePatch(image)
    count = 0
    for patch in image_patch.find("thing"):
        if patch.simple_query("What size is it?") == "large":
            count += 1
    return count
''', len(LARGE)),
    ('''def execute_command(image) -> float:
    image_patch = ImagePatch(image)
    return coerce_to_numeric(image_patch.simple_query("How many objects are there?"))
''', float(len(SCENE.objects))),
    (f'''def execute_command(image) -> ImagePatch:
    image_patch = ImagePatch(image)
    anchor = image_patch.find("{FIRST.color} {FIRST.shape}")[0]
    others = [p for p in image_patch.find("object") if not p.overlaps_with(anchor.left, anchor.lower, anchor.right, anchor.upper)]
    others.sort(key=lambda p: distance(p, anchor))
    return others[0]
''', None),  # checked against the scene below
    (f'''def execute_command(image) -> ImagePatch:
    image_patch = ImagePatch(image)
    candidates = image_patch.find("object")
    index = best_image_match(candidates, ["{FIRST.size} {FIRST.color} {FIRST.shape}"], return_index=True)
    return candidates[index]
''', None),  # checked against the scene below
    ('''def execute_command(image) -> List[ImagePatch]:
    image_patch = ImagePatch(image)
    return image_patch.find("object")
''', None),  # ViperGPT's annotation names List, which the sandbox never defines: checked below
    # ViperGPT's keyword names and defaults: verify_property(name, property=...),
    # simple_query() with no question, best_text_match(options, prefix=...)
    (f'''def execute_command(image) -> str:
    patch = ImagePatch(image).find("{FIRST.color} {FIRST.shape}")[0]
    return bool_to_yesno(patch.verify_property(object_name="{FIRST.shape}", property="{FIRST.color}"))
''', "yes"),
    (f'''def execute_command(image) -> str:
    patch = ImagePatch(image).find("{FIRST.color} {FIRST.shape}")[0]
    return patch.simple_query()
''', FIRST.shape),
    (f'''def execute_command(image) -> str:
    patch = ImagePatch(image).find("{FIRST.color} {FIRST.shape}")[0]
    return patch.best_text_match(["{NOT_FIRST_COLOR}", "{FIRST.color}"], prefix="a photo of a")
''', FIRST.color),
]


@pytest.fixture(scope="module")
def results() -> list:
    with Executor("shapes", workers=1, timeout=30.0) as executor:
        return executor.run_many([Job(program, "vipergpt-style", PIXELS) for program, _ in PROGRAMS])


@pytest.mark.parametrize("index", [i for i, (_, want) in enumerate(PROGRAMS) if want is not None])
def test_vipergpt_style_program_gives_the_scene_answer(results: list, index: int) -> None:
    result = results[index]
    assert result.ok, result.error
    assert result.answer == PROGRAMS[index][1]


def test_nearest_patch_by_distance_is_the_nearest_annotated_object(results: list) -> None:
    result = results[6]
    assert result.ok, result.error

    def gap(o: object) -> float:
        dx = max(FIRST.x - (o.x + o.w), o.x - (FIRST.x + FIRST.w), 0)  # type: ignore[attr-defined]
        dy = max(FIRST.y - (o.y + o.h), o.y - (FIRST.y + FIRST.h), 0)  # type: ignore[attr-defined]
        return float(np.hypot(dx, dy))
    nearest = min((o for o in SCENE.objects if o is not FIRST), key=gap)
    assert result.answer["box"] == _box(nearest)


def test_best_image_match_index_points_at_the_described_object(results: list) -> None:
    result = results[7]
    assert result.ok, result.error
    assert result.answer["box"] == _box(FIRST)


def test_every_name_these_programs_call_is_in_the_prompt_api() -> None:
    api = api_section(task="shapes")
    for name in ("find", "exists", "verify_property", "best_text_match", "simple_query", "overlaps_with",
                 "best_image_match", "distance", "bool_to_yesno", "coerce_to_numeric"):
        assert f"def {name}(" in api, name


def test_a_list_of_patches_annotated_as_vipergpt_does_comes_back_as_boxes(results: list) -> None:
    result = results[8]
    assert result.ok, result.error
    assert sorted(patch["box"] for patch in result.answer) == sorted(_box(o) for o in SCENE.objects)

