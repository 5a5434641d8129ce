"""The `neural` profile: lazy loading, batching, local-folder weights, clear failures (tiny models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from viprog.primitives import ImagePatch, PrimitiveError, get_profile
from viprog.primitives.local import LocalServer


@pytest.fixture(scope="module")
def options(tiny_models_dir) -> dict[str, Any]:
    from viprog.primitives.backends.tiny import build_tiny_models, tiny_yolo

    return {**build_tiny_models(tiny_models_dir), "yolo": tiny_yolo(tiny_models_dir)}


def profile(options: dict[str, Any], **overrides: Any) -> Any:
    merged = {k: v for k, v in options.items() if k != "yolo"} | overrides
    return get_profile("neural", **merged)


PIXELS = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def test_constructing_the_profile_loads_no_model(options: dict[str, Any]) -> None:
    assert profile(options).models == {}


def test_a_clip_primitive_loads_only_clip(options: dict[str, Any]) -> None:
    p = profile(options)
    with LocalServer(p) as server:
        ImagePatch(server.add_image("i", PIXELS)).best_text_match(["red", "blue"])
    assert set(p.models) == {"clip"}


def test_batched_clip_scores_equal_one_at_a_time(options: dict[str, Any]) -> None:
    p = profile(options, batch_size=8)
    crops = [PIXELS[i:i + 20 + i, i:i + 30] for i in range(10)]
    texts = [["a photo of a circle", "a photo of a red square"]] * len(crops)
    batched = p.clip_logits(crops, texts)
    single = [p.clip_logits([c], [t])[0] for c, t in zip(crops, texts)]
    np.testing.assert_allclose(np.array(batched), np.array(single), rtol=1e-4, atol=1e-4)


def test_yolo_boxes_are_absolute_and_inside_the_searched_crop(options: dict[str, Any]) -> None:
    p = profile(options, detector=options["yolo"], box_threshold=0.0)
    with LocalServer(p) as server:
        crop = ImagePatch(server.add_image("i", PIXELS), 40, 20, 120, 90)
        found = crop.find("object")
    assert found, "a random detector at threshold 0 finds something"
    assert all(40 <= f.left <= f.right <= 120 and 20 <= f.lower <= f.upper <= 90 for f in found)


def test_owl_detector_is_chosen_for_an_owl_folder(options: dict[str, Any]) -> None:
    assert profile(options).detector_kind() == "owlv2"
    assert profile(options, detector=options["yolo"]).detector_kind() == "yolo"


def test_compute_depth_is_relative_in_unit_range(options: dict[str, Any]) -> None:
    with LocalServer(profile(options)) as server:
        depth = ImagePatch(server.add_image("i", PIXELS)).crop(0, 0, 50, 50).compute_depth()
    assert 0.0 <= depth <= 1.0


def test_llm_query_is_off_without_a_language_model(options: dict[str, Any]) -> None:
    p = profile(options, llm=None)
    assert not p.supports("llm_query")
    with LocalServer(p) as server, pytest.raises(PrimitiveError, match="'neural'"):
        ImagePatch(server.add_image("i", PIXELS)).llm_query("What is bread made of?")


def test_llm_query_answers_with_text_when_configured(options: dict[str, Any]) -> None:
    with LocalServer(profile(options)) as server:
        answer = ImagePatch(server.add_image("i", PIXELS)).llm_query("what is food made of ?", long_answer=False)
    assert isinstance(answer, str)


def test_a_model_that_cannot_be_loaded_is_a_primitive_error_saying_what_to_do(options: dict[str, Any],
                                                                              tmp_path: Any) -> None:
    with (LocalServer(profile(options, vqa=str(tmp_path / "missing"))) as server,
          pytest.raises(PrimitiveError, match="cannot load its VQA model.*local folder")):
        ImagePatch(server.add_image("i", PIXELS)).simple_query("what is this?")
