"""Task rewards and metrics for vision outputs: pure NumPy functions, batched over images.

Why its own module: a reward is the whole specification of what REINFORCE optimises, so
each one here is a plain function of (prediction, ground truth) with no model, state or
framework in it, written from the definition in its paper (the detection reward of
Pinto et al. 2023, panoptic quality of Kirillov et al. 2019, CIDEr-D of Vedantam et al.
2015). The tests check `coco_map` against pycocotools' COCOeval and `cider` against
pycocoevalcap, and the rest on hand-worked cases and invariances.

Box convention everywhere: `[x0, y0, x1, y1]` in pixels. A detection record is a dict
with `boxes` (N×4), `labels` (N ints) and, for predictions, `scores` (N floats).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Detections = Mapping[str, Any]
IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)  # where COCO reads precision off the curve


def iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of `[x0, y0, x1, y1]` boxes: (N, 4) × (M, 4) → (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, reduce: Literal["image", "dataset"] = "image",
         over: Literal["union", "gt"] = "union") -> np.ndarray | float:
    """Mean IoU of label maps (B×H×W ints in [0, num_classes)).

    `reduce="image"`: one value per image, averaged over the classes present in the
    prediction or the ground truth of that image (the per-sample reward).
    `reduce="dataset"`: the standard benchmark number, per-class IoU from the confusion
    matrix summed over all images, averaged over classes that occur anywhere.
    `over="gt"`: average only over classes in the ground truth, so a stray pixel of an
    absent class costs one pixel of union rather than a whole zero-IoU class (a smoother
    per-sample reward, closer in spirit to the dataset number).
    """
    pred = np.asarray(pred, dtype=np.int64).reshape(len(pred), -1)
    gt = np.asarray(gt, dtype=np.int64).reshape(len(gt), -1)
    if pred.shape != gt.shape:
        raise ValueError(f"miou: prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    offsets = np.arange(len(pred))[:, None] * num_classes * num_classes
    conf = np.bincount((offsets + gt * num_classes + pred).ravel(), minlength=len(pred) * num_classes ** 2)
    conf = conf.reshape(len(pred), num_classes, num_classes)
    if reduce == "dataset":
        conf = conf.sum(0, keepdims=True)
    inter = np.diagonal(conf, axis1=1, axis2=2)
    union = conf.sum(1) + conf.sum(2) - inter
    present = conf.sum(2) > 0 if over == "gt" else union > 0
    per_class = np.where(present, inter / np.maximum(union, 1), np.nan)
    out = np.nanmean(per_class, axis=1)
    return float(out[0]) if reduce == "dataset" else out


def detection_reward(predictions: Sequence[Detections], ground_truths: Sequence[Detections],
                     class_weights: Sequence[float] | None = None, dup_weight: float = 0.3,
                     thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """Per-image detection reward of Pinto et al. 2023: class-weighted recall minus a
    penalty for duplicates, averaged over IoU thresholds 0.50:0.95.

    The definition, at one threshold t: every predicted box points at the ground-truth
    box of its own class that it overlaps most, if that overlap is above t. A ground
    truth that at least one prediction points at is found and earns its class weight;
    each further prediction pointing at it is a duplicate and costs `dup_weight` × that
    weight. Predictions pointing at nothing (a wrong class, a miss) cost nothing, and
    scores are ignored: the reward is about which boxes are emitted.

    Which ground truth a box points at does not depend on t (it is the best one; t only
    decides whether the overlap counts), so the count of predictions per ground truth
    is one table over (threshold, ground truth). `class_weights[c]` defaults to 1
    (big_vision uses inverse COCO class frequencies, normalised to mean 1).
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros(len(predictions))
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths, strict=True)):
        pred_labels = np.asarray(pred["labels"], dtype=np.int64)
        gt_labels = np.asarray(gt["labels"], dtype=np.int64)
        if len(pred_labels) == 0 or len(gt_labels) == 0:
            continue
        same_class = pred_labels[:, None] == gt_labels[None, :]
        overlap = np.where(same_class, iou(pred["boxes"], gt["boxes"]), 0.0)
        target, best = overlap.argmax(1), overlap.max(1)
        counts = np.zeros((len(thr), len(gt_labels)))
        for t_i, t in enumerate(thr):
            counts[t_i] = np.bincount(target[best > t], minlength=len(gt_labels))
        w = np.ones(len(gt_labels)) if class_weights is None else np.asarray(class_weights, np.float64)[gt_labels]
        found = (counts > 0) @ w
        duplicates = np.clip(counts - 1, 0, None) @ w
        out[i] = float(np.mean(found - dup_weight * duplicates))
    return out


def _coco_box_iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """Pairwise IoU of `[x0, y0, x1, y1]` boxes, (D, 4) × (G, 4) → (D, G), in COCO's arithmetic.

    COCO keeps a box as corner, width and height, so its far edge is x0 + w and its area
    w · h; `iou` works from both corners instead. The two differ in the last bit now and
    then, and that bit decides a match whose overlap falls exactly on a threshold, so
    `coco_map` takes the longer road to land on the number COCO prints.
    """
    d_xy, g_xy = dets[:, :2], gts[:, :2]
    d_wh, g_wh = np.clip(dets[:, 2:] - d_xy, 0, None), np.clip(gts[:, 2:] - g_xy, 0, None)
    near = np.maximum(d_xy[:, None], g_xy[None])
    far = np.minimum((d_xy + d_wh)[:, None], (g_xy + g_wh)[None])
    side = np.clip(far - near, 0, None)
    inter = side[..., 0] * side[..., 1]
    union = (d_wh[:, 0] * d_wh[:, 1])[:, None] + (g_wh[:, 0] * g_wh[:, 1])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy_hits(overlaps: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Which detections are true positives, one row per IoU threshold: (D, G) → (T, D) bool.

    `overlaps` holds one image's detections of one class, best score first, against that
    image's ground truth of the class. COCO matches greedily, not optimally: in score
    order, each detection claims the still unclaimed box it overlaps most, if that
    overlap reaches the threshold, and is a false positive otherwise, even when a
    different choice earlier would have left it a box. Boxes are claimed separately at
    each threshold, so all of them advance together here, one row of `free` each.

    Two rules of COCO's that change the outcome: among equal best overlaps the box
    listed last is claimed (which decides what is left for the next detection), and a
    threshold is never stricter than 1 - 1e-10, so that at threshold 1 a box still
    matches its own copy when rounding puts their IoU a hair under 1.
    """
    n_det, n_gt = overlaps.shape
    hits = np.zeros((len(thresholds), n_det), dtype=bool)
    if n_gt == 0:
        return hits
    least = np.minimum(thresholds, 1.0 - 1e-10)[:, None]
    free = np.ones((len(thresholds), n_gt), dtype=bool)
    for d, row in enumerate(overlaps):
        allowed = free & (row >= least)
        claimed = n_gt - 1 - np.argmax(np.where(allowed, row, -np.inf)[:, ::-1], axis=1)  # last of the best
        hits[:, d] = allowed.any(axis=1)
        free[hits[:, d], claimed[hits[:, d]]] = False
    return hits


def _sampled_precision(scores: np.ndarray, hits: np.ndarray, n_gt: int) -> np.ndarray:
    """A class's precision at COCO's 101 recall levels, one row per threshold: (T, 101).

    `scores` and `hits` (T × N) cover the class's kept detections in every image. Walking
    down one ranking of them all (by score, stable, so ties keep image and in-image order)
    traces the precision-recall curve; AP is the area under its upper envelope, where
    the precision at recall r is the best reached at recall r or later. COCO samples
    that envelope at the levels 0, 0.01, …, 1; a level the ranking never reaches
    counts 0, which is how boxes no detection found lower the AP.
    """
    ranked = hits[:, np.argsort(-scores, kind="stable")]
    found = np.cumsum(ranked, axis=1, dtype=np.float64)
    recall = found / n_gt
    envelope = np.maximum.accumulate((found / np.arange(1, ranked.shape[1] + 1))[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(hits), len(RECALL_LEVELS)))
    for t in range(len(hits)):
        rank = np.searchsorted(recall[t], RECALL_LEVELS, side="left")  # first rank at or past each level
        reached = rank < ranked.shape[1]
        sampled[t, reached] = envelope[t, rank[reached]]
    return sampled


def coco_map(predictions: Sequence[Detections], ground_truths: Sequence[Detections],
             iou_thresholds: Sequence[float] = IOU_THRESHOLDS, max_dets: int = 100) -> float:
    """COCO box AP@[.50:.95] (area "all", at most `max_dets` detections per class and
    image), the first number COCO's evaluation prints, on non-crowd boxes.

    The definition: for every class that has ground truth, AP is the precision averaged
    over 101 recall levels and the IoU thresholds, with detections matched to boxes
    image by image (`_greedy_hits`) and then ranked together (`_sampled_precision`);
    the result is the mean over those classes. Detections of a class without ground
    truth change nothing, those in an image without its ground truth are false
    positives. Returns -1 when no image has a ground-truth box, as COCO does.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    classes = sorted({int(c) for g in ground_truths for c in np.asarray(g["labels"]).ravel()})
    if not classes:
        return -1.0
    n_gt, scored = dict.fromkeys(classes, 0), set(classes)
    pooled: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in classes}
    for pred, gt in zip(predictions, ground_truths, strict=True):
        g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
        g_labels = np.asarray(gt["labels"]).ravel()
        p_boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        p_labels = np.asarray(pred["labels"]).ravel()
        p_scores = np.asarray(pred["scores"], dtype=np.float64).ravel()
        for c in sorted(scored & set(g_labels.tolist() + p_labels.tolist())):
            mine = np.flatnonzero(p_labels == c)
            mine = mine[np.argsort(-p_scores[mine], kind="stable")[:max_dets]]
            g = g_boxes[g_labels == c]
            n_gt[c] += len(g)
            pooled[c].append((p_scores[mine], _greedy_hits(_coco_box_iou(p_boxes[mine], g), thresholds)))
    ap = []
    for c in classes:
        scores = np.concatenate([s for s, _ in pooled[c]])
        hits = np.concatenate([h for _, h in pooled[c]], axis=1)
        ap.append(_sampled_precision(scores, hits, n_gt[c]).mean())
    return float(np.mean(ap))


@dataclass
class _ClassTally:
    """What PQ needs of one class over a dataset: true positives, their summed IoU, and
    the false positives and negatives."""

    tp: int = 0
    iou: float = 0.0
    fp: int = 0
    fn: int = 0

    def quality(self) -> tuple[float, float]:
        """(SQ, RQ): mean IoU of the matches, and TP / (TP + FP/2 + FN/2)."""
        sq = self.iou / self.tp if self.tp else 0.0
        return sq, self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)


def _overlaps(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segment ids of both maps and their pixel contingency table (gt × pred)."""
    g_keys, g_idx = np.unique(gt_ids, return_inverse=True)
    p_keys, p_idx = np.unique(pred_ids, return_inverse=True)
    table = np.bincount(g_idx.ravel() * len(p_keys) + p_idx.ravel(), minlength=len(g_keys) * len(p_keys))
    return g_keys, p_keys, table.reshape(len(g_keys), len(p_keys))


def _classes(keys: np.ndarray, void: np.ndarray, categories: Mapping[int, int]) -> np.ndarray:
    """The class of every segment id (-1 for void); a segment without one is an error."""
    missing = [int(k) for k, v in zip(keys, void) if not v and int(k) not in categories]
    if missing:
        raise ValueError(f"panoptic_quality: segments {missing} have no entry in `categories`; give every "
                         "non-void segment id a class")
    return np.array([-1 if v else categories[int(k)] for k, v in zip(keys, void)], dtype=np.int64)


def panoptic_quality(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                     void_id: int = 0) -> dict[str, float]:
    """Dataset panoptic quality PQ = SQ × RQ (Kirillov et al., CVPR 2019), with SQ and RQ,
    averaged over the classes that have any TP, FP or FN; 1.0 is perfect.

    Each image is a dict with `segments` (H×W ints, segment ids; `void_id` = unlabelled)
    and `categories` ({segment id: class}); ground truth may add `crowd` (a set of
    segment ids). As the paper defines it: a predicted and a ground-truth segment of one
    class match when their IoU is above 0.5 (which makes the matching unique), the
    prediction's pixels on void left out of its area; matches are TP, unmatched ground
    truth FN (crowd regions never are), unmatched predictions FP unless more than half
    of them lies on void or on crowd regions of their class.
    """
    tally: defaultdict[int, _ClassTally] = defaultdict(_ClassTally)
    for pred, gt in zip(predictions, ground_truths, strict=True):
        g_keys, p_keys, table = _overlaps(np.asarray(gt["segments"]), np.asarray(pred["segments"]))
        g_void, p_void = g_keys == void_id, p_keys == void_id
        g_cls, p_cls = _classes(g_keys, g_void, gt["categories"]), _classes(p_keys, p_void, pred["categories"])
        crowd = np.isin(g_keys, list(gt.get("crowd", ())))
        on_void = table[g_void].sum(0)  # per predicted segment: its pixels on void ground truth
        p_area = table.sum(0) - on_void
        union = table.sum(1)[:, None] + p_area[None, :] - table
        iou_table = np.where(union > 0, table / np.maximum(union, 1), 0.0)
        eligible = (g_cls[:, None] == p_cls[None, :]) & ~(g_void | crowd)[:, None] & ~p_void[None, :]
        match = eligible & (iou_table > 0.5)
        for g, p in zip(*np.nonzero(match)):
            tally[int(g_cls[g])].tp += 1
            tally[int(g_cls[g])].iou += float(iou_table[g, p])
        for g in np.nonzero(~(g_void | crowd) & ~match.any(1))[0]:
            tally[int(g_cls[g])].fn += 1
        same_class_crowd = (crowd[:, None] & (g_cls[:, None] == p_cls[None, :]))
        ignored = on_void + (table * same_class_crowd).sum(0)
        for p in np.nonzero(~p_void & ~match.any(0))[0]:
            if ignored[p] <= 0.5 * table[:, p].sum():
                tally[int(p_cls[p])].fp += 1
    per_class = [t.quality() for t in tally.values()]
    if not per_class:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    sq, rq = np.array(per_class).T
    return {"pq": float(np.mean(sq * rq)), "sq": float(sq.mean()), "rq": float(rq.mean()), "n": len(per_class)}


def colorfulness(images: np.ndarray) -> np.ndarray:
    """Colourfulness M of Hasler & Süsstrunk (2003), one value per B×H×W×3 uint8 RGB image.

    rg = R − G, yb = (R + G)/2 − B, M = sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²).
    Grey images score 0; typical photos 20–110.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"colorfulness: expected B×H×W×3 RGB images, got shape {x.shape}")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg, yb = (r - g).reshape(len(x), -1), (0.5 * (r + g) - b).reshape(len(x), -1)
    return np.hypot(rg.std(1), yb.std(1)) + 0.3 * np.hypot(rg.mean(1), yb.mean(1))


def ngram_counts(text: str, n: int = 4) -> list[Counter]:
    """The n-grams of a whitespace-tokenised text, one Counter of tuples per order 1 … n."""
    words = text.split()
    return [Counter(zip(*(words[k:] for k in range(order)))) for order in range(1, n + 1)]


@dataclass(frozen=True)
class CiderCorpus:
    """CIDEr's corpus statistics: for each n-gram, the number of images whose reference
    set contains it (document frequency), and the number of images. Build it once from
    the training references (`CiderCorpus.of`) to score samples during tuning."""

    df: Mapping[tuple[str, ...], int]
    images: int

    @classmethod
    def of(cls, references: Sequence[Sequence[str]], n: int = 4) -> CiderCorpus:
        df: Counter = Counter()
        for refs in references:
            df.update({g for r in refs for order in ngram_counts(r, n) for g in order})
        return cls(df, len(references))

    def tfidf(self, counts: list[Counter]) -> list[dict[tuple[str, ...], float]]:
        """Raw term counts × log(images / max(1, df)), per order."""
        log_images = np.log(float(self.images))
        return [{g: tf * (log_images - np.log(max(1.0, self.df.get(g, 0)))) for g, tf in order.items()}
                for order in counts]


def _cider_d(cand: list[dict], cand_len: int, refs: list[tuple[list[dict], int]], sigma: float) -> float:
    """CIDEr-D of one candidate against its references: per order, the cosine of the tf-idf
    vectors with the candidate's weights clipped at the reference's, times a Gaussian in
    the length difference; mean over orders and references, × 10."""
    total = 0.0
    for ref, ref_len in refs:
        penalty = np.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2))
        for c, r in zip(cand, ref):
            dot = sum(min(w, r[g]) * r[g] for g, w in c.items() if g in r)
            norms = np.sqrt(sum(w * w for w in c.values()) * sum(w * w for w in r.values()))
            total += penalty * (dot / norms if norms > 0 else 0.0)
    return 10.0 * total / (len(cand) * len(refs))


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0,
          per_caption: bool = False, corpus: CiderCorpus | None = None) -> float | np.ndarray:
    """CIDEr-D (Vedantam et al., CVPR 2015) of one candidate per image against that image's
    references; the corpus mean, or one score per candidate with `per_caption=True` (the
    per-sample reward).

    Texts are tokenised, lower-cased strings (split on whitespace). The tf-idf weights
    use `corpus` (default: the statistics of `references` themselves, as the COCO
    evaluation computes them). As in the reference evaluation code (coco-caption), the
    term frequencies are raw counts and a text's length is its number of bigrams, which
    the Gaussian penalty (σ = `sigma`) compares.
    """
    if len(candidates) != len(references) or any(len(r) == 0 for r in references):
        raise ValueError("cider: need one candidate and at least one reference per image")
    stats = corpus if corpus is not None else CiderCorpus.of(references, n)

    def vector(text: str) -> tuple[list[dict], int]:
        return stats.tfidf(ngram_counts(text, n)), max(len(text.split()) - 1, 0)

    scores = np.array([_cider_d(*vector(c), [vector(r) for r in refs], sigma)
                       for c, refs in zip(candidates, references)])
    return scores if per_caption else float(scores.mean())
