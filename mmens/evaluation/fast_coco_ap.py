"""pycocotools' bounding-box matching, compiled, for COCO AP alone (area 'all', 100 dets).

Choosing by AP (the e2e-CEL warm start, a grid search, the budget study's best fixed
subsets) evaluates dozens of fused outputs of the same images. ``COCOeval.evaluate`` spends
its time in a Python loop per (image, category, IoU threshold, detection, ground truth);
this module runs the same greedy matching as ``COCOeval.evaluateImg`` in one numba kernel
and gives, per category, the true and false positives that ``accumulate`` reads. The
result is pycocotools' own AP (``tests/test_evaluation/test_fast_coco_ap.py`` checks it
against ``COCOeval`` on real fused outputs, bootstrap resamples included).

What is mirrored, and why it matters for equality:

- detections of an (image, category) sorted by descending score, stable in the order of
  the results list (pycocotools' mergesort), and cut to the first 100;
- ground truths sorted with crowd boxes last (stable), crowd boxes ignored, matched by
  IoU = intersection / detection area and matchable many times;
- the greedy match per IoU threshold ``min(t, 1 - 1e-10)``, which stops at the first crowd
  box once a regular one is matched;
- a match to a ground truth whose id is 0 counts as no match (pycocotools stores the id).
"""
import functools
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

import numpy as np


def _njit_on_first_call(fn: Callable) -> Callable:
    """``numba.njit(cache=True)(fn)``, compiled (or loaded from numba's cache) at the first
    call: importing numba costs ~0.5 s, which every ``import mmens`` (each tool's start-up)
    paid at import time, while only AP evaluation calls these kernels."""
    compiled = None

    @functools.wraps(fn)
    def call(*args):
        nonlocal compiled
        if compiled is None:
            import numba
            compiled = numba.njit(cache=True)(fn)
        return compiled(*args)
    return call


class DetectionArrays(NamedTuple):
    """COCO-results as arrays: ``image_id [D]``, ``category_id [D]``, ``bbox [D, 4]``
    (x, y, w, h pixels, float64) and ``score [D]`` (float64), in results-list order."""
    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    @classmethod
    def from_results(cls, results: List[dict]) -> 'DetectionArrays':
        return cls(np.array([int(r['image_id']) for r in results], dtype=np.int64),
                   np.array([int(r['category_id']) for r in results], dtype=np.int64),
                   np.array([r['bbox'] for r in results], dtype=np.float64).reshape(-1, 4),
                   np.array([r['score'] for r in results], dtype=np.float64))


@_njit_on_first_call
def _match(d_box, g_box, g_crowd, g_id, groups, thrs, tp, fp):  # pragma: no cover (jit)
    """For each group ``(d0, d1, g0, g1)``: mark ``tp[t, d]`` / ``fp[t, d]`` of its
    detections ``d0:d1`` against its ground truths ``g0:g1`` at every threshold t."""
    num_t = thrs.shape[0]
    for k in range(groups.shape[0]):
        d0, d1, g0, g1 = groups[k, 0], groups[k, 1], groups[k, 2], groups[k, 3]
        nd, ng = d1 - d0, g1 - g0
        ious = np.zeros((nd, ng))
        for d in range(nd):  # maskUtils.iou (bbIou), in its order of operations
            dx, dy, dw, dh = d_box[d0 + d, 0], d_box[d0 + d, 1], d_box[d0 + d, 2], d_box[d0 + d, 3]
            da = dw * dh
            for g in range(ng):
                gx, gy, gw, gh = g_box[g0 + g, 0], g_box[g0 + g, 1], g_box[g0 + g, 2], g_box[g0 + g, 3]
                w = min(dw + dx, gw + gx) - max(dx, gx)
                if w <= 0:
                    continue
                h = min(dh + dy, gh + gy) - max(dy, gy)
                if h <= 0:
                    continue
                inter = w * h
                union = da if g_crowd[g0 + g] else da + gw * gh - inter
                ious[d, g] = inter / union
        for t in range(num_t):
            thr = min(thrs[t], 1 - 1e-10)
            matched = np.zeros(ng, dtype=np.bool_)
            for d in range(nd):
                best = thr
                m = -1
                for g in range(ng):
                    if matched[g] and not g_crowd[g0 + g]:
                        continue
                    if m > -1 and not g_crowd[g0 + m] and g_crowd[g0 + g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best = ious[d, g]
                    m = g
                if m == -1:
                    fp[t, d0 + d] = True
                    continue
                matched[m] = True
                if not g_crowd[g0 + m]:  # a match to a crowd box is ignored
                    if g_id[g0 + m] != 0:
                        tp[t, d0 + d] = True
                    else:
                        fp[t, d0 + d] = True


def coco_ap_tables(coco_gt, results: Union[List[dict], DetectionArrays],
                   img_ids: Sequence[int],
                   iou_thrs: np.ndarray, max_det: int = 100) -> List[Optional[dict]]:
    """Per category of ``coco_gt`` (sorted ids), what :meth:`CocoEvaluation.ap` reads:
    ``scores [D]``, ``tp``/``fp`` ``[T, D]`` (detections grouped by image in ``img_ids``
    order, by descending score inside an image), ``start``/``count`` ``[I]`` of each
    image's detections and ``npig [I]`` (ground truths not ignored); None for a category
    without any detection or ground truth on these images."""
    cat_ids = sorted(coco_gt.getCatIds())
    n_img, n_cat = len(img_ids), len(cat_ids)
    img_pos = {int(i): p for p, i in enumerate(img_ids)}
    cat_pos = {int(c): k for k, c in enumerate(cat_ids)}
    # ground truths, in the order pycocotools groups them (per image, file order)
    gts = [a for i in img_ids for a in coco_gt.imgToAnns.get(int(i), [])
           if a['category_id'] in cat_pos]
    g_img = np.array([img_pos[a['image_id']] for a in gts], dtype=np.int64)
    g_cat = np.array([cat_pos[a['category_id']] for a in gts], dtype=np.int64)
    g_crowd = np.array([bool(a.get('iscrowd', 0)) for a in gts], dtype=np.bool_)
    g_id = np.array([a['id'] for a in gts], dtype=np.int64)
    g_box = np.array([a['bbox'] for a in gts], dtype=np.float64).reshape(-1, 4)
    g_order = np.lexsort((g_crowd, g_img, g_cat))  # stable: crowd boxes last
    g_img, g_cat, g_crowd, g_id, g_box = (a[g_order] for a in (g_img, g_cat, g_crowd, g_id,
                                                                g_box))
    # detections of these images and categories, sorted by (category, image, -score)
    if not isinstance(results, DetectionArrays):
        results = DetectionArrays.from_results(results)
    pos_of_img = np.full(int(max(img_ids, default=0)) + 1, -1, dtype=np.int64)
    pos_of_img[np.asarray(img_ids, dtype=np.int64)] = np.arange(n_img)
    pos_of_cat = np.full(int(max(cat_ids, default=0)) + 1, -1, dtype=np.int64)
    pos_of_cat[np.asarray(cat_ids, dtype=np.int64)] = np.arange(n_cat)
    ri, rc = results.image_id.astype(np.int64), results.category_id.astype(np.int64)
    d_img = np.where((ri >= 0) & (ri < len(pos_of_img)),
                     pos_of_img[np.clip(ri, 0, len(pos_of_img) - 1)], -1)
    d_cat = np.where((rc >= 0) & (rc < len(pos_of_cat)),
                     pos_of_cat[np.clip(rc, 0, len(pos_of_cat) - 1)], -1)
    keep = (d_img >= 0) & (d_cat >= 0)  # detections of these images and categories
    d_img, d_cat = d_img[keep], d_cat[keep]
    d_score = np.asarray(results.score, dtype=np.float64)[keep]
    d_box = np.asarray(results.bbox, dtype=np.float64).reshape(-1, 4)[keep]
    d_order = np.lexsort((-d_score, d_img, d_cat))
    d_img, d_cat, d_score, d_box = (a[d_order] for a in (d_img, d_cat, d_score, d_box))
    d_key, g_key = d_cat * n_img + d_img, g_cat * n_img + g_img
    rank = np.arange(len(d_key)) - np.searchsorted(d_key, d_key, side='left')
    top = rank < max_det  # the first max_det of each (image, category)
    d_img, d_cat, d_score, d_box, d_key = (a[top] for a in (d_img, d_cat, d_score, d_box,
                                                             d_key))
    keys = np.union1d(d_key, g_key)
    groups = np.stack([np.searchsorted(d_key, keys, 'left'),
                       np.searchsorted(d_key, keys, 'right'),
                       np.searchsorted(g_key, keys, 'left'),
                       np.searchsorted(g_key, keys, 'right')], 1).astype(np.int64)
    thrs = np.asarray(iou_thrs, dtype=np.float64)
    tp = np.zeros((len(thrs), len(d_key)), dtype=np.bool_)
    fp = np.zeros_like(tp)
    if len(groups):
        _match(d_box, g_box, g_crowd, g_id, groups, thrs, tp, fp)
    npig_all = np.zeros((n_cat, n_img), dtype=np.int64)
    np.add.at(npig_all, (g_cat[~g_crowd], g_img[~g_crowd]), 1)
    present = np.zeros(n_cat, dtype=bool)
    present[keys // n_img] = True
    c_start = np.searchsorted(d_cat, np.arange(n_cat), 'left')
    c_end = np.searchsorted(d_cat, np.arange(n_cat), 'right')
    tables: List[Optional[dict]] = []
    for k in range(n_cat):
        if not present[k]:
            tables.append(None)
            continue
        s, e = c_start[k], c_end[k]
        counts = np.bincount(d_img[s:e], minlength=n_img)
        tables.append(dict(scores=d_score[s:e], tp=tp[:, s:e], fp=fp[:, s:e],
                           start=np.cumsum(counts) - counts, count=counts,
                           npig=npig_all[k]))
    return tables


@_njit_on_first_call
def _resample_aps(scores, tp, fp, cat_bounds, start, count, npig, rec_thrs,
                  samples):  # pragma: no cover (jit)
    """COCO AP of each resample (a row of image positions, repeats allowed): pycocotools'
    ``accumulate`` (area 'all', 100 detections) on the pooled detections of the sampled
    images, per category, then the mean over categories with ground truth."""
    num_t, num_r = tp.shape[0], rec_thrs.shape[0]
    out = np.zeros(samples.shape[0])
    for s in range(samples.shape[0]):
        pos = samples[s]
        total_ap, num_cats = 0.0, 0
        for k in range(cat_bounds.shape[0]):
            c0 = cat_bounds[k]
            if c0 < 0:  # no detection and no ground truth
                continue
            gt = 0
            dets = 0
            for p in pos:
                gt += npig[k, p]
                dets += count[k, p]
            if gt == 0:
                continue
            num_cats += 1
            if dets == 0:
                continue  # AP 0 at every threshold
            idx = np.empty(dets, dtype=np.int64)  # pooled in sample order
            j = 0
            for p in pos:
                for d in range(count[k, p]):
                    idx[j] = c0 + start[k, p] + d
                    j += 1
            order = idx[np.argsort(-scores[idx], kind='mergesort')]
            q_sum = 0.0
            for t in range(num_t):
                tps = np.cumsum(tp[t, order].astype(np.float64))
                fps = np.cumsum(fp[t, order].astype(np.float64))
                rc = tps / gt
                pr = tps / (fps + tps + np.spacing(1))
                for i in range(dets - 1, 0, -1):
                    if pr[i] > pr[i - 1]:
                        pr[i - 1] = pr[i]
                inds = np.searchsorted(rc, rec_thrs)
                q = np.zeros(num_r)
                for r in range(num_r):
                    if inds[r] < dets:
                        q[r] = pr[inds[r]]
                q_sum += q.mean()
            total_ap += q_sum / num_t
        out[s] = total_ap / num_cats if num_cats else 0.0
    return out


class PooledTables(NamedTuple):
    """The tables of :func:`coco_ap_tables` concatenated over categories, as the compiled
    accumulator reads them: ``scores [D]``, ``tp``/``fp`` ``[T, D]``, ``bounds [K]``
    (first detection of each category, -1 for a category without a table), and ``start``,
    ``count``, ``npig`` ``[K, I]``."""
    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    bounds: np.ndarray
    start: np.ndarray
    count: np.ndarray
    npig: np.ndarray


def pool_tables(tables: List[Optional[dict]]) -> Optional[PooledTables]:
    """Concatenate the per-category tables of :func:`coco_ap_tables` once (an evaluation
    is resampled many times); None when no category has a table."""
    present = [t for t in tables if t is not None]
    if not present:
        return None
    num_img = len(present[0]['count'])
    bounds = np.full(len(tables), -1, dtype=np.int64)
    start = np.zeros((len(tables), num_img), dtype=np.int64)
    count = np.zeros_like(start)
    npig = np.zeros_like(start)
    offset = 0
    for k, t in enumerate(tables):
        if t is not None:
            bounds[k] = offset
            start[k], count[k], npig[k] = t['start'], t['count'], t['npig']
            offset += len(t['scores'])
    return PooledTables(np.concatenate([t['scores'] for t in present]),
                        np.concatenate([t['tp'] for t in present], 1),
                        np.concatenate([t['fp'] for t in present], 1),
                        bounds, start, count, npig)


def resample_aps(pooled: Optional[PooledTables], rec_thrs: np.ndarray,
                 samples: np.ndarray) -> np.ndarray:
    """``[S]`` COCO AP over each row of image positions ``samples [S, I]`` (repeats
    allowed) from :func:`pool_tables`, in one compiled pass: the only AP accumulator of
    mmens (:meth:`~mmens.evaluation.coco_eval.CocoEvaluation.ap` is one row)."""
    if pooled is None:
        return np.zeros(len(samples))
    return _resample_aps(*pooled, np.asarray(rec_thrs, dtype=np.float64),
                         np.ascontiguousarray(samples, dtype=np.int64))
