"""What a detector gets wrong, counted: duplicates, recall by object size, precision, box counts.

Why: mAP says *how much* reward tuning changed a detector, not *what* it changed. The
detection reward pays for recall and charges for duplicates, so the questions are
whether tuning removed repeated boxes, found objects the MLE model missed (and which:
small ones?), or only moved scores. These counts answer them on the test split, for
the MLE model, the tuned one and MLE trained as long.

Matching, per image, at one IoU threshold (0.5): predictions in order of descending
score (ties keep their order) each take the unmatched ground truth of their own class
that they overlap most, if that overlap is at least the threshold (a true positive).
A prediction that finds no such ground truth is a false positive of one of three kinds:
a *duplicate* (it overlaps an already matched ground truth of its class at the
threshold: an object boxed twice), *wrong class* (it overlaps a ground truth of another
class at the threshold) or *background* (neither: a box on nothing or badly placed).

Object sizes are by ground-truth box area in pixels. The shapes world's objects (radius
3 to 6.5 on 32×32 images) have boxes of 16 to 169 px²; the default thresholds, small
below 7×7 = 49 px² and large from 9×9 = 81 px², cut it into thirds (the 33rd and 67th
percentiles of the detection demo's training boxes are 49 and 80 px²). COCO's 32² and
96² would put every object here in "small".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from viprog.reinforce.rewards import Detections, iou

SMALL_AREA, LARGE_AREA = 49.0, 81.0
SIZES: tuple[str, ...] = ("small", "medium", "large")


def size_class(boxes: np.ndarray, small: float = SMALL_AREA, large: float = LARGE_AREA) -> np.ndarray:
    """0 / 1 / 2 (small / medium / large) per `[x0, y0, x1, y1]` box: area < small,
    small ≤ area < large, area ≥ large."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (area >= small).astype(np.int64) + (area >= large)


def match_image(pred: Detections, gt: Detections, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One image: (kind of each prediction, whether each ground truth was found).

    Kinds: "tp", "duplicate", "wrong_class", "background", in the predictions' own order
    (the matching itself visits them by descending score)."""
    p_labels = np.asarray(pred["labels"], dtype=np.int64).ravel()
    g_labels = np.asarray(gt["labels"], dtype=np.int64).ravel()
    scores = np.asarray(pred.get("scores", np.ones(len(p_labels))), dtype=np.float64).ravel()
    overlap = iou(pred["boxes"], gt["boxes"])
    hits = overlap >= threshold
    same = p_labels[:, None] == g_labels[None, :]
    found = np.zeros(len(g_labels), dtype=bool)
    kinds = np.empty(len(p_labels), dtype=object)
    for d in np.argsort(-scores, kind="mergesort"):
        free = hits[d] & same[d] & ~found
        if free.any():
            found[np.flatnonzero(free)[overlap[d, free].argmax()]] = True
            kinds[d] = "tp"
        elif (hits[d] & same[d]).any():
            kinds[d] = "duplicate"
        elif hits[d].any():
            kinds[d] = "wrong_class"
        else:
            kinds[d] = "background"
    return kinds, found


def detection_diagnostics(predictions: Sequence[Detections], ground_truths: Sequence[Detections],
                          threshold: float = 0.5, small: float = SMALL_AREA,
                          large: float = LARGE_AREA) -> dict[str, float]:
    """Counts over a dataset at IoU ≥ `threshold` (see the module docstring).

    Returns precision and recall (in %), recall of small / medium / large objects (in %,
    NaN where the split has none), the numbers of duplicates, wrong-class and background
    false positives, the share of predictions that are duplicates (in %), and the mean
    numbers of predicted and ground-truth boxes per image."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"detection_diagnostics: {len(predictions)} predictions for {len(ground_truths)} images")
    kinds: list[np.ndarray] = []
    found_by_size = np.zeros(3)
    gt_by_size = np.zeros(3)
    for pred, gt in zip(predictions, ground_truths):
        k, found = match_image(pred, gt, threshold)
        kinds.append(k)
        sizes = size_class(gt["boxes"], small, large)
        found_by_size += np.bincount(sizes[found], minlength=3)
        gt_by_size += np.bincount(sizes, minlength=3)
    all_kinds = np.concatenate(kinds) if kinds else np.array([], dtype=object)
    n_pred, n_gt = len(all_kinds), gt_by_size.sum()
    count = {kind: int((all_kinds == kind).sum()) for kind in ("tp", "duplicate", "wrong_class", "background")}
    out = {"precision50": 100 * count["tp"] / n_pred if n_pred else float("nan"),
           "recall50": 100 * count["tp"] / n_gt if n_gt else float("nan")}
    for s, name in enumerate(SIZES):
        out[f"recall50_{name}"] = 100 * found_by_size[s] / gt_by_size[s] if gt_by_size[s] else float("nan")
    out |= {"duplicates": float(count["duplicate"]), "wrong_class": float(count["wrong_class"]),
            "background": float(count["background"]),
            "duplicate_share": 100 * count["duplicate"] / n_pred if n_pred else float("nan"),
            "boxes_per_image": n_pred / max(len(predictions), 1), "objects_per_image": n_gt / max(len(predictions), 1)}
    return out


DIAGNOSTIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("map", "mAP"), ("precision50", "P@.5"), ("recall50", "R@.5"), ("recall50_small", "R small"),
    ("recall50_medium", "R med"), ("recall50_large", "R large"), ("duplicates", "dups"),
    ("wrong_class", "wrong cls"), ("background", "bg FP"), ("boxes_per_image", "boxes/img"),
    ("objects_per_image", "objs/img"))


def diagnostics_table(results: Sequence) -> str:
    """One line per `DemoResult` and model (MLE, tuned, MLE as long) whose metrics carry
    the diagnostics; empty when none do."""
    lines = [f"{'demo':<20} {'seed':>4} {'model':<12}" + "".join(f" {title:>9}" for _, title in DIAGNOSTIC_COLUMNS)]
    for r in results:
        models = [("MLE", r.after_mle), ("tuned", r.after_reward), ("MLE as long", r.after_mle_control)]
        for model, metrics in models:
            if metrics is None or "duplicates" not in metrics:
                continue
            lines.append(f"{r.demo:<20} {r.seed:>4} {model:<12}"
                         + "".join(f" {metrics[key]:>9.2f}" for key, _ in DIAGNOSTIC_COLUMNS))
    return "\n".join(lines) if len(lines) > 1 else ""
