"""Detection diagnostics on hand-made boxes whose counts are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from viprog.reinforce.diagnostics import detection_diagnostics, match_image, size_class


def boxes(*rows: list[float], labels: list[int] | None = None, scores: list[float] | None = None) -> dict:
    record = {"boxes": np.array(rows, dtype=np.float64).reshape(-1, 4),
              "labels": np.array(labels if labels is not None else [0] * len(rows))}
    if scores is not None:
        record["scores"] = np.array(scores, dtype=np.float64)
    return record


SMALL, MEDIUM, LARGE = [0, 0, 5, 5], [10, 10, 18, 18], [20, 20, 30, 30]  # 25, 64, 100 px²


def test_size_classes_cut_at_49_and_81_square_pixels() -> None:
    sizes = size_class(np.array([[0, 0, 6, 8], [0, 0, 7, 7], [0, 0, 8, 10], [0, 0, 9, 9], [0, 0, 4, 4]]))
    assert sizes.tolist() == [0, 1, 1, 2, 0]  # 48, 49, 80, 81, 16


def test_a_perfect_prediction_has_full_precision_and_recall_and_no_errors() -> None:
    gt = boxes(SMALL, MEDIUM, LARGE, labels=[0, 1, 2])
    d = detection_diagnostics([{**gt, "scores": np.ones(3)}], [gt])
    assert d["precision50"] == d["recall50"] == 100.0
    assert d["recall50_small"] == d["recall50_medium"] == d["recall50_large"] == 100.0
    assert d["duplicates"] == d["wrong_class"] == d["background"] == d["duplicate_share"] == 0.0
    assert d["boxes_per_image"] == d["objects_per_image"] == 3.0


def test_a_second_box_on_a_found_object_is_one_duplicate_whichever_scores_higher() -> None:
    gt = boxes(LARGE)
    shifted = [21, 20, 31, 30]  # IoU 90 / 110 with the object
    for scores in ([0.9, 0.8], [0.2, 0.8]):
        d = detection_diagnostics([boxes(LARGE, shifted, scores=scores)], [gt])
        assert d["duplicates"] == 1.0 and d["duplicate_share"] == 50.0
        assert d["precision50"] == 50.0 and d["recall50"] == 100.0 and d["background"] == 0.0


def test_the_higher_scored_box_is_matched_first() -> None:
    gt = boxes(LARGE)
    kinds, found = match_image(boxes(LARGE, [21, 20, 31, 30], scores=[0.1, 0.9]), gt)
    assert kinds.tolist() == ["duplicate", "tp"] and found.tolist() == [True]


def test_a_box_overlapping_two_objects_takes_the_one_still_free() -> None:
    """The second box overlaps object A most, but A is taken: it matches B, no duplicate."""
    gt = boxes([0, 0, 10, 10], [2, 0, 12, 10])  # two objects, IoU 80 / 120 with each other
    pred = boxes([0, 0, 10, 10], [0.5, 0, 10.5, 10], scores=[0.9, 0.8])  # 2nd: IoU 0.90 with A, 0.74 with B
    d = detection_diagnostics([pred], [gt])
    assert d["duplicates"] == 0.0 and d["recall50"] == 100.0 and d["precision50"] == 100.0


def test_a_missed_small_object_lowers_small_recall_only() -> None:
    gt = boxes(SMALL, MEDIUM, LARGE)
    d = detection_diagnostics([boxes(MEDIUM, LARGE, scores=[1, 1])], [gt])
    assert d["recall50_small"] == 0.0 and d["recall50_medium"] == 100.0 and d["recall50_large"] == 100.0
    assert d["recall50"] == pytest.approx(200 / 3) and d["precision50"] == 100.0
    assert d["duplicates"] == d["background"] == 0.0


def test_wrong_class_and_background_boxes_are_told_apart_from_duplicates() -> None:
    gt = boxes(LARGE, labels=[1])
    wrong_label = boxes(LARGE, labels=[2], scores=[1.0])
    nowhere = boxes([0, 0, 4, 4], labels=[1], scores=[1.0])
    d = detection_diagnostics([wrong_label, nowhere], [gt, gt])
    assert d["wrong_class"] == 1.0 and d["background"] == 1.0 and d["duplicates"] == 0.0
    assert d["recall50"] == 0.0 and d["precision50"] == 0.0


def test_iou_of_exactly_one_half_counts_as_a_match() -> None:
    gt = boxes([0, 0, 10, 20])
    assert detection_diagnostics([boxes([0, 0, 10, 10], scores=[1.0])], [gt])["recall50"] == 100.0
    assert detection_diagnostics([boxes([0, 0, 10, 9.9], scores=[1.0])], [gt])["recall50"] == 0.0


def test_counts_add_up_over_images_and_empty_images_are_fine() -> None:
    gt = [boxes(SMALL, LARGE), boxes(), boxes(MEDIUM)]
    pred = [boxes(LARGE, LARGE, scores=[1, 1]), boxes([0, 0, 8, 8], scores=[1.0]), boxes()]
    d = detection_diagnostics(pred, gt)
    assert d["duplicates"] == 1.0 and d["background"] == 1.0  # a box on an image without objects
    assert d["boxes_per_image"] == 1.0 and d["objects_per_image"] == 1.0
    assert d["recall50"] == pytest.approx(100 / 3) and d["precision50"] == pytest.approx(100 / 3)
    assert d["recall50_small"] == d["recall50_medium"] == 0.0 and d["recall50_large"] == 100.0
    only_large = detection_diagnostics([pred[0]], [boxes(LARGE)])
    assert math.isnan(only_large["recall50_small"])  # no small object in that split
    with pytest.raises(ValueError, match="predictions for"):
        detection_diagnostics(pred, gt[:2])
