"""Rewards agree with the references that define them, on random cases and by hand."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from viprog.reinforce import rewards


def random_boxes(rng: np.random.Generator, n: int, size: float = 64.0) -> np.ndarray:
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(2, size * 0.4, (n, 2))
    return np.round(np.c_[xy, xy + wh], 1)


def random_detection_case(rng: np.random.Generator, images: int = 6, classes: int = 3):
    gts, preds = [], []
    for _ in range(images):
        g = random_boxes(rng, int(rng.integers(0, 6)))
        gl = rng.integers(0, classes, len(g))
        keep = rng.random(len(g)) < 0.8
        jitter = g[keep] + rng.normal(0, 2.0, (int(keep.sum()), 4))
        dup = jitter[: int(rng.integers(0, 2))]
        dup = dup + rng.normal(0, 1.0, dup.shape)
        fp = random_boxes(rng, int(rng.integers(0, 3)))
        p = np.r_[jitter, dup, fp].reshape(-1, 4)
        p = np.c_[np.minimum(p[:, :2], p[:, 2:]), np.maximum(p[:, :2], p[:, 2:])]  # COCO ignores w < 0
        pl = np.r_[gl[keep], gl[keep][: len(dup)], rng.integers(0, classes, len(fp))].astype(np.int64)
        flip = rng.random(len(pl)) < 0.1
        pl[flip] = rng.integers(0, classes, int(flip.sum()))
        gts.append({"boxes": g, "labels": gl})
        preds.append({"boxes": p, "labels": pl, "scores": rng.random(len(pl))})
    return preds, gts


def pycocotools_map(preds, gts) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = []
    for i, g in enumerate(gts):
        for b, c in zip(g["boxes"], g["labels"]):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": xywh(b),
                         "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i} for i in range(len(gts))], "annotations": anns,
                        "categories": [{"id": c} for c in (1, 2, 3)]}
        coco.createIndex()
        dets = [{"image_id": i, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                for i, p in enumerate(preds) for b, c, s in zip(p["boxes"], p["labels"], p["scores"])]
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.parametrize("seed", range(12))
def test_coco_map_matches_pycocotools(seed: int) -> None:
    preds, gts = random_detection_case(np.random.default_rng(seed))
    if not any(len(p["labels"]) for p in preds) or not any(len(g["labels"]) for g in gts):
        pytest.skip("COCO's loadRes needs at least one detection and one box")
    assert rewards.coco_map(preds, gts) == pytest.approx(pycocotools_map(preds, gts), abs=1e-9)


def test_coco_map_perfect_and_empty() -> None:
    g = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 40.0]]), "labels": np.array([0, 1])}
    assert rewards.coco_map([{**g, "scores": np.array([0.9, 0.8])}], [g]) == pytest.approx(1.0)
    none = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
    assert rewards.coco_map([none], [g]) == 0.0


def test_iou_matches_torchvision_and_hand_values() -> None:
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    np.testing.assert_allclose(rewards.iou(a, b), box_iou(torch.tensor(a), torch.tensor(b)).numpy(), atol=1e-12)
    assert rewards.iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    assert rewards.iou([[0, 0, 1, 1]], [[5, 5, 6, 6]])[0, 0] == 0.0


def test_miou_per_image_and_dataset() -> None:
    gt = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
    pred = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 2]]])
    # image 0: class 0 IoU 1/2, class 1 IoU 2/3; image 1: class 0 IoU 3/4, class 2 IoU 0
    np.testing.assert_allclose(rewards.miou(pred, gt, 3), [(1 / 2 + 2 / 3) / 2, 3 / 8])
    # over ground-truth classes only: image 1 drops class 2 → 3/4
    np.testing.assert_allclose(rewards.miou(pred, gt, 3, over="gt"), [(1 / 2 + 2 / 3) / 2, 3 / 4])
    # dataset: class 0: 4 / 6, class 1: 2 / 3, class 2: 0
    assert rewards.miou(pred, gt, 3, reduce="dataset") == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)


def big_vision_reward(pred, gt, thrs=rewards.IOU_THRESHOLDS, nms_w=0.3) -> float:
    """big_vision's `_reward_fn_thr` transcribed one-hot for one-hot (uniform class weights,
    every box live), to check the loop-free re-implementation against."""
    if len(pred["labels"]) == 0 or len(gt["labels"]) == 0:
        return 0.0
    pl, gl = np.asarray(pred["labels"]), np.asarray(gt["labels"])
    out = []
    for thr in thrs:
        iou = box_iou(torch.tensor(pred["boxes"]), torch.tensor(gt["boxes"])).numpy()
        iou = np.where(iou > thr, iou, 0.0) * (pl[:, None] == gl[None, :])
        iou = iou * np.eye(iou.shape[1])[iou.argmax(1)]
        idx = iou.argmax(0)
        idx = np.where(iou[idx, np.arange(len(gl))] > 0, idx, -1)
        match_reward = np.sum(idx >= 0)
        matches_mask = np.stack([np.arange(len(pl)) == i for i in idx], 1)
        out.append(match_reward - nms_w * np.sum((iou > 0) * (1 - matches_mask)))
    return float(np.mean(out))


def test_detection_reward_matches_big_vision_logic() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        preds, gts = random_detection_case(rng)
        expect = [big_vision_reward(p, g) for p, g in zip(preds, gts)]
        np.testing.assert_allclose(rewards.detection_reward(preds, gts), expect, atol=1e-9)


def test_detection_reward_hand_cases() -> None:
    g = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), "labels": np.array([0, 1])}
    assert rewards.detection_reward([g], [g])[0] == pytest.approx(2.0)
    dup = {"boxes": np.r_[g["boxes"], g["boxes"][:1]], "labels": np.array([0, 1, 0])}
    assert rewards.detection_reward([dup], [g])[0] == pytest.approx(2.0 - 0.3)
    wrong = {"boxes": g["boxes"], "labels": np.array([1, 0])}
    assert rewards.detection_reward([wrong], [g])[0] == 0.0
    # recall over thresholds: IoU 0.8 counts at 0.50 .. 0.75 (t < IoU), i.e. 6 of 10
    shifted = {"boxes": np.array([[0, 0, 10, 8.0]]), "labels": np.array([0])}
    assert rewards.detection_reward([shifted], [g])[0] == pytest.approx(0.6)
    weighted = rewards.detection_reward([g], [g], class_weights=[0.5, 2.0])[0]
    assert weighted == pytest.approx(2.5)


def reference_pq(preds, gts, offset: int = 256 * 256 * 256, void: int = 0) -> dict[str, float]:
    """panopticapi's pq_compute_single_core + PQStat.pq_average (isthing=None), written
    from its published definition: pairs found by id arithmetic, per-class stats."""
    stat: dict[int, dict[str, float]] = {}

    def cat(c: int) -> dict[str, float]:
        return stat.setdefault(c, {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})

    for p, g in zip(preds, gts):
        pan_gt, pan_pred = np.asarray(g["segments"], np.uint64), np.asarray(p["segments"], np.uint64)
        gt_segms = {k: {"category_id": v, "iscrowd": int(k in g.get("crowd", ()))} for k, v in g["categories"].items()}
        pred_segms = {k: {"category_id": v} for k, v in p["categories"].items()}
        for lab, cnt in zip(*np.unique(pan_gt, return_counts=True)):
            if int(lab) != void:
                gt_segms[int(lab)]["area"] = int(cnt)
        for lab, cnt in zip(*np.unique(pan_pred, return_counts=True)):
            if int(lab) != void:
                pred_segms[int(lab)]["area"] = int(cnt)
        labels, counts = np.unique(pan_gt * offset + pan_pred, return_counts=True)
        gt_pred_map = {(int(lab) // offset, int(lab) % offset): int(c) for lab, c in zip(labels, counts)}
        gt_matched, pred_matched = set(), set()
        for (gl, pl), inter in gt_pred_map.items():
            if gl not in gt_segms or pl not in pred_segms or gt_segms[gl]["iscrowd"] == 1:
                continue
            if gt_segms[gl]["category_id"] != pred_segms[pl]["category_id"]:
                continue
            union = pred_segms[pl]["area"] + gt_segms[gl]["area"] - inter - gt_pred_map.get((void, pl), 0)
            if inter / union > 0.5:
                s = cat(gt_segms[gl]["category_id"])
                s["tp"] += 1
                s["iou"] += inter / union
                gt_matched.add(gl)
                pred_matched.add(pl)
        crowd_labels = {}
        for gl, info in gt_segms.items():
            if gl in gt_matched:
                continue
            if info["iscrowd"] == 1:
                crowd_labels[info["category_id"]] = gl
                continue
            cat(info["category_id"])["fn"] += 1
        for pl, info in pred_segms.items():
            if pl in pred_matched:
                continue
            inter = gt_pred_map.get((void, pl), 0)
            if info["category_id"] in crowd_labels:
                inter += gt_pred_map.get((crowd_labels[info["category_id"]], pl), 0)
            if inter / info["area"] > 0.5:
                continue
            cat(info["category_id"])["fp"] += 1
    pq = sq = rq = 0.0
    n = 0
    for s in stat.values():
        if s["tp"] + s["fp"] + s["fn"] == 0:
            continue
        n += 1
        pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
        sq += s["iou"] / s["tp"] if s["tp"] else 0.0
        rq += s["tp"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
    return {"pq": pq / max(n, 1), "sq": sq / max(n, 1), "rq": rq / max(n, 1), "n": n}


def random_panoptic(rng: np.random.Generator, size: int = 16, base: dict | None = None) -> dict:
    if base is None:
        seg = np.zeros((size, size), np.int64)
        for sid in range(1, int(rng.integers(2, 7))):
            x0, y0 = rng.integers(0, size - 3, 2)
            w, h = rng.integers(2, 9, 2)
            seg[y0:y0 + h, x0:x0 + w] = sid
        cats = {int(s): int(rng.integers(0, 3)) for s in np.unique(seg) if s}
        crowd = {s for s in cats if rng.random() < 0.15}
        return {"segments": seg, "categories": cats, "crowd": crowd}
    seg = np.roll(base["segments"], tuple(rng.integers(-2, 3, 2)), (0, 1)) * 3  # new ids
    seg[rng.random(seg.shape) < 0.05] = 0
    extra = rng.integers(0, size - 4, 2)
    seg[extra[0]:extra[0] + 4, extra[1]:extra[1] + 4] = 100
    cats = {int(s): (base["categories"][int(s) // 3] if s != 100 else 1) for s in np.unique(seg) if s}
    for s in cats:
        if rng.random() < 0.15:
            cats[s] = int(rng.integers(0, 3))
    return {"segments": seg, "categories": cats}


@pytest.mark.parametrize("seed", range(8))
def test_panoptic_quality_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gts = [random_panoptic(rng) for _ in range(4)]
    preds = [random_panoptic(rng, base=g) for g in gts]
    got, want = rewards.panoptic_quality(preds, gts), reference_pq(preds, gts)
    assert want["n"] > 0
    for key in ("pq", "sq", "rq", "n"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_panoptic_quality_perfect() -> None:
    g = random_panoptic(np.random.default_rng(3))
    g.pop("crowd")
    assert rewards.panoptic_quality([g], [g])["pq"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_cider_matches_pycocoevalcap(seed: int) -> None:
    from pycocoevalcap.cider.cider import Cider

    rng = np.random.default_rng(seed)
    vocab = ["a", "the", "red", "blue", "circle", "square", "small", "big", "left", "of", "right", "on"]

    def sentence() -> str:
        return " ".join(rng.choice(vocab, int(rng.integers(2, 9))))

    cands = [sentence() for _ in range(6)]
    refs = [[sentence() for _ in range(int(rng.integers(1, 5)))] for _ in range(6)]
    refs[0].append(cands[0])  # one strong match, so scores are not all near zero
    want, want_each = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    assert rewards.cider(cands, refs) == pytest.approx(want, abs=1e-9)
    np.testing.assert_allclose(rewards.cider(cands, refs, per_caption=True), want_each, atol=1e-9)


def test_colorfulness() -> None:
    grey = np.full((1, 4, 4, 3), 77, np.uint8)
    assert rewards.colorfulness(grey)[0] == 0.0
    img = np.zeros((1, 2, 1, 3), np.uint8)
    img[0, 0, 0] = [255, 0, 0]  # rg = 255, yb = 127.5
    # rg = [255, 0], yb = [127.5, 0]: σ = (127.5, 63.75), μ = (127.5, 63.75)
    expect = np.hypot(127.5, 63.75) * 1.3
    assert rewards.colorfulness(img)[0] == pytest.approx(expect)
    with pytest.raises(ValueError):
        rewards.colorfulness(np.zeros((4, 4, 3)))
