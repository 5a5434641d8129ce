"""Task rewards and metrics for vision outputs: pure NumPy functions, batched over images.

Why its own module: a reward is the whole specification of what REINFORCE optimises, so
each one here is a plain function of (prediction, ground truth) with no model, state or
framework in it, and each is cross-checked in the tests against the reference that
defines the metric (pycocotools' COCOeval for `coco_map`, pycocoevalcap's CIDEr-D for
`cider`, panopticapi's `pq_compute` definition for `panoptic_quality`, big_vision's
JAX `reward_fn` for `detection_reward`).

Box convention everywhere: `[x0, y0, x1, y1]` in pixels. A detection record is a dict
with `boxes` (N×4), `labels` (N ints) and, for predictions, `scores` (N floats).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Detections = Mapping[str, Any]
IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))


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
    """Per-image detection reward of Pinto et al. 2023 (big_vision's `reward_fn`).

    For each IoU threshold t: IoUs ≤ t or between different labels count as 0; each
    prediction keeps only its best ground truth; each ground truth is matched to its best
    prediction and earns its class weight; every other prediction overlapping a ground
    truth above t is a duplicate and costs `dup_weight` × its class weight. The reward is
    the mean over thresholds (0.50:0.95). Scores are ignored: the reward is about which
    boxes are emitted. `class_weights[c]` defaults to 1 (big_vision uses inverse COCO
    class frequencies, normalised to mean 1).
    """
    out = np.zeros(len(predictions))
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths, strict=True)):
        pl, gl = np.asarray(pred["labels"], dtype=np.int64), np.asarray(gt["labels"], dtype=np.int64)
        if len(pl) == 0 or len(gl) == 0:
            continue
        weights = np.ones(int(max(pl.max(), gl.max())) + 1) if class_weights is None else np.asarray(class_weights)
        base = iou(pred["boxes"], gt["boxes"]) * (pl[:, None] == gl[None, :])
        total = 0.0
        for thr in thresholds:
            m = np.where(base > thr, base, 0.0)
            keep = np.zeros_like(m)
            keep[np.arange(len(pl)), m.argmax(1)] = 1.0  # each prediction → one ground truth
            m = m * keep
            best = m.argmax(0)
            matched = m[best, np.arange(len(gl))] > 0
            match_reward = weights[gl][matched].sum()
            chosen = np.zeros_like(m)
            chosen[best[matched], np.arange(len(gl))[matched]] = 1.0
            penalty = ((m > 0) * (1 - chosen) * weights[pl][:, None]).sum()
            total += match_reward - dup_weight * penalty
        out[i] = total / len(thresholds)
    return out


def _xywh_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU exactly as pycocotools' maskUtils.iou on non-crowd boxes."""
    return iou(np.c_[dt[:, :2], dt[:, :2] + dt[:, 2:]], np.c_[gt[:, :2], gt[:, :2] + gt[:, 2:]])


def coco_map(predictions: Sequence[Detections], ground_truths: Sequence[Detections],
             iou_thresholds: Sequence[float] = IOU_THRESHOLDS, max_dets: int = 100) -> float:
    """COCO box AP@[.50:.95] (area "all", maxDets 100), the number COCOeval prints first.

    A re-implementation of COCOeval's evaluate + accumulate for non-crowd boxes: per
    class and image, detections by descending score (stable) are greedily matched to the
    unmatched ground truth of highest IoU ≥ t; precision is made monotone and read at 101
    recall points; classes without ground truth are left out of the mean. Returns -1 when
    no image has a ground-truth box (as COCOeval does).
    """
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    rec_thrs = np.linspace(0.0, 1.00, 101)
    classes = sorted({int(c) for g in ground_truths for c in np.asarray(g["labels"]).ravel()}
                     | {int(c) for p in predictions for c in np.asarray(p["labels"]).ravel()})
    precision = -np.ones((len(thr), len(rec_thrs), len(classes)))
    for k, cls in enumerate(classes):
        scores, tps, n_gt = [], [], 0
        for pred, gt in zip(predictions, ground_truths, strict=True):
            g = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)[np.asarray(gt["labels"]) == cls]
            sel = np.asarray(pred["labels"]) == cls
            d = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)[sel]
            s = np.asarray(pred["scores"], dtype=np.float64)[sel]
            n_gt += len(g)
            if len(g) == 0 and len(d) == 0:
                continue
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            d, s = d[order], s[order]
            ious = _xywh_iou(np.c_[d[:, :2], d[:, 2:] - d[:, :2]], np.c_[g[:, :2], g[:, 2:] - g[:, :2]])
            tp = np.zeros((len(thr), len(d)), dtype=bool)
            for t_i, t in enumerate(thr):
                taken = np.zeros(len(g), dtype=bool)
                for d_i in range(len(d)):
                    best, m = min(t, 1 - 1e-10), -1
                    for g_i in range(len(g)):
                        if taken[g_i] or ious[d_i, g_i] < best:
                            continue
                        best, m = ious[d_i, g_i], g_i
                    if m >= 0:
                        taken[m], tp[t_i, d_i] = True, True
            scores.append(s)
            tps.append(tp)
        if n_gt == 0 or not scores:
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        tp = np.concatenate(tps, axis=1)[:, order]
        tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
        fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
        for t_i in range(len(thr)):
            rc = tp_sum[t_i] / n_gt
            pr = tp_sum[t_i] / (fp_sum[t_i] + tp_sum[t_i] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]
            q = np.zeros(len(rec_thrs))
            idx = np.searchsorted(rc, rec_thrs, side="left")
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            precision[t_i, :, k] = q
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def panoptic_quality(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                     void_id: int = 0) -> dict[str, float]:
    """Dataset PQ / SQ / RQ as panopticapi's `pq_compute` defines them (all categories).

    Each image is a dict with `segments` (H×W ints, segment ids; `void_id` = unlabelled)
    and `categories` ({segment id: class}); ground truth may add `crowd` (set of segment
    ids). A ground-truth and a predicted segment of the same class match when their IoU
    > 0.5, the union leaving out predicted pixels on void; an unmatched prediction lying
    more than half on void or on a crowd region of its class is not a false positive.
    PQ = Σ IoU / (TP + FP/2 + FN/2), averaged over classes with any TP, FP or FN.
    """
    tp, fp, fn, iou_sum = Counter(), Counter(), Counter(), defaultdict(float)
    for pred, gt in zip(predictions, ground_truths, strict=True):
        p_ids, g_ids = np.asarray(pred["segments"]).ravel(), np.asarray(gt["segments"]).ravel()
        p_cat, g_cat = dict(pred["categories"]), dict(gt["categories"])
        crowd = set(gt.get("crowd", ()))
        p_area = Counter(p_ids[p_ids != void_id].tolist())
        g_area = Counter(g_ids[g_ids != void_id].tolist())
        pairs = Counter(zip(g_ids.tolist(), p_ids.tolist()))
        g_matched, p_matched = set(), set()
        for (g, p), inter in pairs.items():
            if g == void_id or p == void_id or g in crowd or g_cat[g] != p_cat[p]:
                continue
            union = p_area[p] + g_area[g] - inter - pairs.get((void_id, p), 0)
            if inter / union > 0.5:
                tp[g_cat[g]] += 1
                iou_sum[g_cat[g]] += inter / union
                g_matched.add(g)
                p_matched.add(p)
        crowd_by_cat = {g_cat[g]: g for g in crowd}
        for g in g_area:
            if g not in g_matched and g not in crowd:
                fn[g_cat[g]] += 1
        for p in p_area:
            if p in p_matched:
                continue
            ignored = pairs.get((void_id, p), 0)
            if p_cat[p] in crowd_by_cat:
                ignored += pairs.get((crowd_by_cat[p_cat[p]], p), 0)
            if ignored / p_area[p] > 0.5:
                continue
            fp[p_cat[p]] += 1
    pq = sq = rq = 0.0
    cats = [c for c in set(tp) | set(fp) | set(fn) if tp[c] + fp[c] + fn[c] > 0]
    for c in cats:
        denom = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
        pq += iou_sum[c] / denom
        sq += iou_sum[c] / tp[c] if tp[c] else 0.0
        rq += tp[c] / denom
    n = max(len(cats), 1)
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": len(cats)}


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


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0,
          per_caption: bool = False) -> float | np.ndarray:
    """Corpus CIDEr-D (Vedantam et al. 2015) as pycocoevalcap computes it.

    Inputs are already tokenised, lower-cased strings (split on whitespace). Document
    frequencies come from the references of this corpus; n-gram TF-IDF vectors; the
    candidate's weights are clipped by the reference's; a Gaussian penalty on the length
    difference (measured, as in pycocoevalcap, in bigram counts); ×10, averaged over
    references and n = 1..4. `per_caption=True` returns one score per candidate (the
    per-sample reward); otherwise their mean.
    """
    if len(candidates) != len(references) or any(len(r) == 0 for r in references):
        raise ValueError("cider: need one candidate and at least one reference per image")
    refs = [[_ngrams(r.split(), n) for r in rs] for rs in references]
    df = Counter(g for rs in refs for g in set().union(*rs))
    ref_len = np.log(float(len(refs)))

    def vec(counts: Counter) -> tuple[list[dict], np.ndarray, int]:
        v: list[dict] = [{} for _ in range(n)]
        for g, tf in counts.items():
            v[len(g) - 1][g] = tf * (ref_len - np.log(max(1.0, df[g])))
        norms = np.array([np.sqrt(sum(x * x for x in d.values())) for d in v])
        return v, norms, sum(tf for g, tf in counts.items() if len(g) == 2)

    scores = np.zeros(len(candidates))
    for i, (cand, rs) in enumerate(zip(candidates, refs)):
        vh, nh, lh = vec(_ngrams(cand.split(), n))
        total = np.zeros(n)
        for r in rs:
            vr, nr, lr = vec(r)
            val = np.array([sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                            for k in range(n)])
            ok = (nh != 0) & (nr != 0)
            val[ok] /= nh[ok] * nr[ok]
            total += val * np.exp(-float(lh - lr) ** 2 / (2 * sigma ** 2))
        scores[i] = total.mean() / len(rs) * 10.0
    return scores if per_caption else float(scores.mean())
