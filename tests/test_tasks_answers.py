"""Answer normalisation and the shared rewards (pure functions)."""

from __future__ import annotations

import pytest

from viprog.executor.result import ExecutionResult
from viprog.tasks.answers import answer_box, box_iou, box_reward, exact_match, example_reward, normalize_answer
from viprog.tasks.base import Example


@pytest.mark.parametrize(("raw", "norm"), [
    (True, "yes"), (False, "no"), (2, "2"), (2.0, "2"), (2.5, "2.5"), ("Two.", "2"), ("  The Red Cube ", "red cube"),
    ("3.0", "3"), ("Yes!", "yes"), ("isn't", "is not"), (None, ""), ("an orange", "orange"),
])
def test_normalize_answer_maps_spellings_to_one_form(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_counts_an_int_program_answer_against_a_string_label():
    assert exact_match(3, "3") == 1.0
    assert exact_match(3, "4") == 0.0


def test_box_iou_of_identical_disjoint_and_half_overlapping_boxes():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)


def test_answer_box_reads_a_returned_patch_a_list_of_patches_and_four_numbers():
    patch = {"type": "ImagePatch", "box": [1, 2, 3, 4]}
    assert answer_box(patch) == (1, 2, 3, 4)
    assert answer_box([patch]) == (1, 2, 3, 4)
    assert answer_box([1, 2, 3, 4]) == (1, 2, 3, 4)
    assert answer_box("a box") is None


def test_box_reward_threshold_and_iou_modes():
    half = [5, 0, 15, 10]
    assert box_reward(half, [0, 0, 10, 10]) == 0.0  # IoU 1/3 < 0.5
    assert box_reward(half, [0, 0, 10, 10], mode="iou") == pytest.approx(1 / 3)
    assert box_reward([0, 0, 10, 9], [0, 0, 10, 10]) == 1.0


def test_example_reward_is_zero_for_a_failed_run_even_with_the_right_answer():
    ex = Example(id="q", image="x.png", query="?", answer="yes")
    failed = ExecutionResult(answer="yes", error="boom", error_kind="runtime")
    assert example_reward(ex, failed) == 0.0
    assert example_reward(ex, ExecutionResult(answer=True)) == 1.0
