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



def detections(boxes, labels, scores=None) -> dict:
    out = {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels, dtype=int)}
    return out if scores is None else {**out, "scores": np.array(scores, dtype=float)}


def test_coco_map_edge_cases_match_pycocotools_and_hand_values() -> None:
    # Two boxes of class 0 that the first detection overlaps equally (IoU 9/11, a hit up to
    # 0.80): COCO gives it the one listed last, which leaves the first for the second detection
    # (its copy), a hit everywhere. Above 0.80 the first is a miss, so recall 1/2 at precision
    # 1/2. Had the tie gone the other way, the second detection would reach only the other box,
    # at IoU 2/3, and miss at 0.70:0.80 as well.
    tie = ([detections([[1, 0, 11, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])],
           [detections([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])])
    # Overlaps exactly at a threshold count: IoU 0.5 is a hit at 0.5 only, 0.75 at 0.50:0.75.
    at_threshold = ([detections([[0, 0, 10, 5], [20, 0, 30, 7.5]], [0, 1], [0.9, 0.9])],
                    [detections([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 1])])
    # A duplicate on one object is a false positive at every threshold; ranked above the
    # second object's detection it leaves precision 2/3 at the 50 recall levels above 1/2.
    # An image with detections but no ground truth adds false positives, here ranked last
    # (harmless) for class 0 and first for class 1 (precision 1/2 throughout); class 2 has
    # no ground truth anywhere and is left out of the mean.
    duplicate = ([detections([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                             [0, 0, 0, 1], [0.9, 0.8, 0.7, 0.5]),
                  detections([[0, 0, 5, 5], [5, 5, 9, 9], [1, 1, 3, 3]], [0, 1, 2], [0.1, 0.6, 0.9])],
                 [detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 1]),
                  detections(np.zeros((0, 4)), [])])
    for (preds, gts), expected in [(tie, 0.7 + 0.3 * 0.5 * 51 / 101), (at_threshold, (0.1 + 0.6) / 2),
                                   (duplicate, ((51 + 50 * 2 / 3) / 101 + 1 / 2) / 2)]:
        assert rewards.coco_map(preds, gts) == pytest.approx(expected, abs=1e-12)
        assert rewards.coco_map(preds, gts) == pytest.approx(pycocotools_map(preds, gts), abs=1e-12)


def test_coco_map_keeps_the_top_scored_detections_and_tolerates_rounding_at_threshold_one() -> None:
    gt = detections([[0, 0, 10, 10]], [0])
    miss_first = detections([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.5, 0.5])  # a tie: list order decides
    assert rewards.coco_map([miss_first], [gt]) == pytest.approx(1 / 2)
    assert rewards.coco_map([miss_first], [gt], max_dets=1) == 0.0
    hit_first = {**miss_first, "boxes": miss_first["boxes"][::-1]}
    assert rewards.coco_map([hit_first], [gt], max_dets=1) == pytest.approx(1.0)
    # At threshold 1 an IoU within 1e-10 of 1 still matches; one 1e-9 short does not.
    for dy, expected in [(0.0, 1.0), (1e-10, 1.0), (1e-8, 0.0)]:
        nearly = detections([[0, 0, 10, 10 + dy]], [0], [1.0])
        assert rewards.coco_map([nearly], [gt], iou_thresholds=(1.0,)) == pytest.approx(expected)

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


def test_detection_reward_each_duplicate_costs_0_3_times_its_weight() -> None:
    g = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), "labels": np.array([0, 1])}
    for k in range(4):  # k exact copies of the class-1 box (weight 2)
        extra = np.repeat([[20, 20, 30, 30.0]], k, 0)
        pred = {"boxes": np.r_[g["boxes"], extra], "labels": np.r_[g["labels"], np.ones(k, int)]}
        assert rewards.detection_reward([pred], [g], class_weights=[1.0, 2.0])[0] == pytest.approx(3.0 - 0.3 * 2.0 * k)
    # a second box on the same object at IoU 0.8 is a duplicate at the six thresholds below 0.8 only
    near = {"boxes": np.r_[g["boxes"], [[0, 0, 10, 8.0]]], "labels": np.array([0, 1, 0])}
    assert rewards.detection_reward([near], [g])[0] == pytest.approx(2.0 - 0.3 * 0.6)


def test_detection_reward_ignores_misses_order_and_scores() -> None:
    rng = np.random.default_rng(4)
    preds, gts = random_detection_case(rng, images=20)
    base = rewards.detection_reward(preds, gts)
    far = [{**p, "boxes": np.r_[p["boxes"], [[200, 200, 210, 210]]], "labels": np.r_[p["labels"], 0]} for p in preds]
    np.testing.assert_allclose(rewards.detection_reward(far, gts), base)  # a box on nothing costs nothing
    shuffled = []
    for p, g in zip(preds, gts):
        pi, gi = rng.permutation(len(p["labels"])), rng.permutation(len(g["labels"]))
        p = {**{k: v[pi] for k, v in p.items()}, "scores": rng.random(len(pi))}
        shuffled.append((p, {k: v[gi] for k, v in g.items()}))
    np.testing.assert_allclose(rewards.detection_reward([p for p, _ in shuffled], [g for _, g in shuffled]), base)
    # never more than the number of objects, and exactly that for the ground truth itself
    assert (base <= np.array([len(g["labels"]) for g in gts]) + 1e-12).all()
    np.testing.assert_allclose(rewards.detection_reward(gts, gts), [len(g["labels"]) for g in gts])


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


def square_scene() -> dict:
    """12×12: three 3×3 squares of class 1 (ids 1-3), a 4×4 of class 2 (id 4), background
    id 9 of class 0 (101 pixels)."""
    seg = np.full((12, 12), 9)
    seg[0:3, 0:3], seg[0:3, 5:8], seg[5:8, 0:3], seg[7:11, 7:11] = 1, 2, 3, 4
    return {"segments": seg, "categories": {1: 1, 2: 1, 3: 1, 4: 2, 9: 0}}


def test_panoptic_quality_perfect_is_one_whatever_the_ids() -> None:
    g = square_scene()
    relabel = {1: 40, 2: 7, 3: 12, 4: 3, 9: 5}
    p = {"segments": np.vectorize(relabel.get)(g["segments"]),
         "categories": {relabel[k]: c for k, c in g["categories"].items()}}
    assert rewards.panoptic_quality([p], [g]) == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}


def test_panoptic_quality_exact_costs_of_a_miss_a_shrink_and_a_false_positive() -> None:
    g = square_scene()
    rows = np.arange(12)[:, None]
    missed = {**g, "segments": np.where(g["segments"] == 3, 9, g["segments"])}  # square 3 painted background
    # class 1: TP 2, FN 1 → RQ = 2 / 2.5; background IoU 101 / 110
    got = rewards.panoptic_quality([missed], [g])
    assert got["rq"] == pytest.approx((0.8 + 1 + 1) / 3)
    assert got["pq"] == pytest.approx((0.8 + 1 + 101 / 110) / 3)
    shrunk = {**g, "segments": np.where((g["segments"] == 4) & (rows == 10), 9, g["segments"])}
    # the 4×4 loses a row: IoU 12 / 16; the background gains its 4 pixels: IoU 101 / 105
    got = rewards.panoptic_quality([shrunk], [g])
    assert got["pq"] == pytest.approx((1 + 12 / 16 + 101 / 105) / 3) and got["rq"] == 1.0
    half = {**g, "segments": np.where((g["segments"] == 4) & (rows >= 9), 9, g["segments"])}
    # IoU exactly 0.5 does not match (the threshold is strict): class 2 gets an FP and an FN, PQ 0
    assert rewards.panoptic_quality([half], [g])["pq"] == pytest.approx((1 + 0 + 101 / 109) / 3)
    blob = {"segments": g["segments"].copy(), "categories": {**g["categories"], 5: 2}}
    blob["segments"][10:12, 0:2] = 5
    # a 4-pixel blob of class 2 on the background: class 2 has TP 1, FP 1 → 1 / 1.5
    assert rewards.panoptic_quality([blob], [g])["pq"] == pytest.approx((1 + 1 / 1.5 + 97 / 101) / 3)


def test_panoptic_quality_void_and_crowd() -> None:
    g = square_scene()
    g["segments"][11, :] = 0  # the last row is void: the background keeps 89 pixels
    over_void = {**g, "segments": np.where(g["segments"] == 0, 9, g["segments"])}
    # the background prediction runs onto the void row: those pixels leave its area
    assert rewards.panoptic_quality([over_void], [g])["pq"] == pytest.approx(1.0)
    on_void = {"segments": g["segments"].copy(), "categories": {**g["categories"], 6: 2}}
    on_void["segments"][10:12, 0:2] = 6  # a 4-pixel blob, half on void: not more than half, so an FP
    assert rewards.panoptic_quality([on_void], [g])["pq"] == pytest.approx((1 + 1 / 1.5 + 87 / 89) / 3)
    on_void["segments"][10, 0:2] = 9
    on_void["segments"][11, 0:3] = 6  # all 3 of its pixels on void: ignored
    assert rewards.panoptic_quality([on_void], [g])["pq"] == pytest.approx(1.0)
    crowd = {**square_scene(), "crowd": {4}}
    no_4 = {**crowd, "segments": np.where(crowd["segments"] == 4, 9, crowd["segments"])}
    # a crowd region is never a false negative (class 2 drops out); the background pays for its pixels
    got = rewards.panoptic_quality([no_4], [crowd])
    assert got["n"] == 2 and got["pq"] == pytest.approx((1 + 101 / 117) / 2)
    # a prediction of the crowd's class lying on it is not a false positive
    assert rewards.panoptic_quality([square_scene()], [crowd]) == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    with pytest.raises(ValueError, match="no entry"):
        rewards.panoptic_quality([{"segments": g["segments"], "categories": {}}], [g])


@pytest.mark.parametrize("seed", range(6))
def test_panoptic_quality_is_invariant_to_ids_and_image_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gts = [random_panoptic(rng) for _ in range(5)]
    preds = [random_panoptic(rng, base=g) for g in gts]
    want = rewards.panoptic_quality(preds, gts)
    assert want["n"] > 0 and 0 <= want["pq"] <= min(want["sq"], want["rq"]) <= 1

    def relabel(rec: dict) -> dict:  # void (0) stays, every other id gets a new one
        new = dict(zip(rec["categories"], rng.permutation(1000)[: len(rec["categories"])] + 1))
        out = {"segments": np.vectorize(lambda v: new.get(int(v), v))(rec["segments"]),
               "categories": {new[k]: c for k, c in rec["categories"].items()}}
        return out | ({"crowd": {new[k] for k in rec["crowd"]}} if "crowd" in rec else {})

    order = rng.permutation(len(gts))
    got = rewards.panoptic_quality([relabel(preds[i]) for i in order], [relabel(gts[i]) for i in order])
    for key in ("pq", "sq", "rq", "n"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # the ground truth itself, its crowd regions left void, is perfect
    perfect = [{"segments": np.where(np.isin(g["segments"], list(g["crowd"])), 0, g["segments"]),
                "categories": {k: c for k, c in g["categories"].items() if k not in g["crowd"]}} for g in gts]
    assert rewards.panoptic_quality(perfect, gts)["pq"] == pytest.approx(1.0)


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


def test_cider_hand_values_clipping_and_length_penalty() -> None:
    refs = [["a b"], ["c d"]]  # every n-gram is in one image of two: idf log 2 throughout
    # orders 1 and 2 match exactly (cosine 1), orders 3 and 4 are empty: 10 × (1 + 1) / 4
    assert rewards.cider(["a b", "d c"], refs, per_caption=True) == pytest.approx([5.0, 2.5])
    # "a a": unigram weights (2, 0) clipped at the reference's (1, 1) → 1 / (2 √2); no bigram in common
    assert rewards.cider(["a a", "c d"], refs, per_caption=True)[0] == pytest.approx(10 * (1 / (2 * np.sqrt(2))) / 4)
    long_refs = [["a b c d e f g h i j"], ["x y"]]
    plain = rewards.cider(["a b c"], long_refs[:1], sigma=1e9, corpus=rewards.CiderCorpus.of(long_refs))
    tight = rewards.cider(["a b c"], long_refs[:1], corpus=rewards.CiderCorpus.of(long_refs))
    assert tight == pytest.approx(plain * np.exp(-((2 - 9) ** 2) / (2 * 6.0**2)))  # 2 vs 9 bigrams
    assert rewards.CiderCorpus.of(long_refs).df[("a", "b")] == 1 and rewards.CiderCorpus.of(long_refs).images == 2


def test_cider_with_train_corpus_statistics() -> None:
    train = [["a red circle", "the red circle"], ["a blue square", "a square"], ["a circle and a square"]]
    corpus = rewards.CiderCorpus.of(train)
    refs = [["a red circle", "a circle"]]
    # an n-gram in every training image has idf 0 and earns nothing; a rare one does
    assert corpus.tfidf(rewards.ngram_counts("a", 1))[0][("a",)] == 0.0
    assert rewards.cider(["a red circle"], refs, corpus=corpus) > rewards.cider(["a blue circle"], refs, corpus=corpus)
    # scoring a corpus against its own statistics is the default
    assert rewards.cider(["a red circle"] * 3, train, corpus=corpus) == rewards.cider(["a red circle"] * 3, train)


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
