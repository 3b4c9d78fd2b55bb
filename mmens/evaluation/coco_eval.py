"""Quiet pycocotools COCO evaluation of COCO-results lists, with per-image reuse.

``CocoEvaluation`` runs ``COCOeval.evaluate()`` once and can then re-accumulate the
metrics over any multiset of images (a fold, or a bootstrap resample with repeats) without
re-matching. Its AP alone (:meth:`CocoEvaluation.ap`, bootstrap resamples) comes from the
one compiled accumulator of :mod:`.fast_coco_ap`; the numbers are pycocotools' own
(``tests/test_evaluation/test_fast_coco_ap.py``).
"""
import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params
from torch import Tensor

from mmens.ops.boxes import xyxy_to_xywh

from .fast_coco_ap import (DetectionArrays, PooledTables, coco_ap_tables, pool_tables,
                           resample_aps)

METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def _ap(precision: np.ndarray, iou_idx: Optional[int] = None, area: int = 0) -> float:
    p = precision[:, :, :, area, -1]  # [T, R, K] at maxDets=100
    if iou_idx is not None:
        p = p[iou_idx]
    p = p[p > -1]
    return float(p.mean()) if p.size else -1.0


class CocoEvaluation:
    """Bounding-box COCO evaluation of one result list.

    Args:
        coco_gt (COCO): ground truth. results (list[dict]): COCO-results entries (with
            ``ap_only``, also :class:`DetectionArrays`).
        img_ids (Sequence[int], optional): images to evaluate (default: all of ``coco_gt``).
        ap_only (bool): only :meth:`ap` (pycocotools' matching compiled in
            :mod:`.fast_coco_ap`; the same AP, many times faster), without running
            ``COCOeval.evaluate()``: for choosing by AP, e.g. the e2e-CEL warm start or a
            grid search. :meth:`metrics` is then unavailable.
    """

    def __init__(self, coco_gt: COCO, results: Union[List[dict], DetectionArrays],
                 img_ids: Optional[Sequence[int]] = None, ap_only: bool = False) -> None:
        self.img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
        self.ap_only = ap_only
        self.empty = (len(results.score) == 0 if isinstance(results, DetectionArrays)
                      else not results)
        self._params = Params(iouType='bbox')
        self._params.imgIds = [int(i) for i in np.unique(self.img_ids)]  # as evaluate()
        # what ap() reads, built at its first call: the compiled matching of .fast_coco_ap,
        # also for a full evaluation (one AP accumulator, whichever evaluation ran)
        self._source: Optional[tuple] = (coco_gt, results)
        self._pooled: Optional[PooledTables] = None
        if ap_only or self.empty:
            return
        self._evaluate(coco_gt, copy.deepcopy(results), 'bbox')

    def _evaluate(self, coco_gt: COCO, results: List[dict], iou_type: str) -> None:
        """``COCOeval.evaluate()`` of ``results`` (pycocotools' ``loadRes`` edits them in
        place: callers pass a copy) over :attr:`img_ids`, quietly; keeps its per-image
        matches and parameters, which :meth:`metrics` re-accumulates."""
        with contextlib.redirect_stdout(io.StringIO()):
            self.E = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
            self.E.params.imgIds = self.img_ids
            self.E.evaluate()
        self._eval_imgs = self.E.evalImgs
        self._params = copy.deepcopy(self.E._paramsEval)

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        """``[S]`` AP over each row of image positions ``samples [S, I]``."""
        if self.empty:
            return np.zeros(len(samples))
        if self._source is not None:
            coco_gt, results = self._source
            self._pooled = pool_tables(coco_ap_tables(
                coco_gt, results, self._params.imgIds, self._params.iouThrs,
                self._params.maxDets[-1]))
            self._source = None  # the detections are no longer needed
        return resample_aps(self._pooled, self._params.recThrs, samples)

    def ap(self, positions: np.ndarray) -> float:
        """COCO AP (IoU .50:.95, all areas, 100 dets) over ``img_ids[positions]``.

        pycocotools' ``accumulate`` for that list of images (repeats allowed), compiled;
        used for bootstrap resampling and choosing by AP.
        """
        return float(self._resample(np.asarray(positions, dtype=np.int64)[None])[0])

    def bootstrap_aps(self, num_samples: int, seed: int = 0) -> np.ndarray:
        """``[num_samples]`` AP over bootstrap resamples of the images (with repeats), drawn
        by ``RandomState(seed)``: the same resamples for every evaluation of as many
        images, so differences are paired. Cached (a reference is paired many times)."""
        cache = self.__dict__.setdefault('_bootstrap', {})
        if (num_samples, seed) not in cache:
            rng = np.random.RandomState(seed)
            n = len(self.img_ids)
            samples = np.stack([rng.randint(0, n, n) for _ in range(num_samples)])  # [S, I]
            cache[(num_samples, seed)] = self._resample(samples)
        return cache[(num_samples, seed)]

    def metrics(self, positions: Optional[np.ndarray] = None) -> Dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl over ``img_ids[positions]`` (repeats allowed)."""
        if self.empty:
            return {k: 0.0 for k in METRIC_NAMES}
        if self.ap_only:
            raise ValueError('CocoEvaluation(ap_only=True) has AP only: use ap()')
        n_img = len(self._params.imgIds)
        if positions is None:
            positions = np.arange(n_img)
        k_n, a_n = len(self._params.catIds), len(self._params.areaRng)
        idx = (np.arange(k_n * a_n)[:, None] * n_img + positions[None, :]).reshape(-1)
        E = self.E
        E.evalImgs = [self._eval_imgs[i] for i in idx]
        E._paramsEval = copy.copy(self._params)
        E._paramsEval.imgIds = [self._params.imgIds[i] for i in positions]
        E.params.imgIds = E._paramsEval.imgIds
        with contextlib.redirect_stdout(io.StringIO()):
            E.accumulate()
        prec = E.eval['precision']
        return dict(AP=_ap(prec), AP50=_ap(prec, 0), AP75=_ap(prec, 5),
                    APs=_ap(prec, area=1), APm=_ap(prec, area=2), APl=_ap(prec, area=3))


def results_to_arrays(boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor,
                      img_ids: Sequence[int], cat_ids: Sequence[int], rounded: bool = True
                      ) -> DetectionArrays:
    """Pixel ``x1, y1, x2, y2`` detections → :class:`DetectionArrays` (``bbox`` as xywh).

    ``rounded``: boxes to 1e-3 pixel and scores to 1e-6 (compact files); False keeps the
    float32 values exactly (member dumps, compared with live members).
    """
    xywh = xyxy_to_xywh(boxes.detach().cpu().double().numpy().reshape(-1, 4))
    sc = scores.detach().cpu().double().numpy()
    if rounded:
        xywh, sc = xywh.round(3), sc.round(6)
    return DetectionArrays(np.asarray(img_ids)[images.cpu().numpy()],
                           np.asarray(cat_ids)[labels.cpu().numpy()], xywh, sc)


def results_to_coco(boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor,
                    img_ids: Sequence[int], cat_ids: Sequence[int],
                    rounded: bool = True) -> List[dict]:
    """Pixel ``x1, y1, x2, y2`` detections → COCO-results entries (:func:`results_to_arrays`
    as dicts)."""
    return arrays_to_results(results_to_arrays(boxes, scores, labels, images, img_ids,
                                               cat_ids, rounded))


def arrays_to_results(d: DetectionArrays) -> List[dict]:
    """:class:`DetectionArrays` → COCO-results entries (Python ints and floats)."""
    return [dict(image_id=i, category_id=c, bbox=bb, score=s)
            for i, c, bb, s in zip(d.image_id.tolist(), d.category_id.tolist(),
                                   d.bbox.tolist(), d.score.tolist())]


def coco_metrics(coco_gt: COCO, results: List[dict],
                 img_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO bbox AP, AP50, AP75, APs, APm, APl (maxDets 100) of ``results``."""
    return CocoEvaluation(coco_gt, results, img_ids).metrics()


def paired_bootstrap(a: CocoEvaluation, b: CocoEvaluation, num_samples: int = 200,
                     seed: int = 0, alpha: float = 0.05) -> Dict[str, float]:
    """Paired bootstrap over images of ``AP(a) - AP(b)``.

    Both evaluations must cover the same images in the same order. Returns the point
    difference, the ``(alpha/2, 1 - alpha/2)`` percentile interval and the share of
    resamples where a beats b.
    """
    if a.img_ids != b.img_ids:
        raise ValueError('paired_bootstrap: both evaluations must cover the same images')
    diffs = a.bootstrap_aps(num_samples, seed) - b.bootstrap_aps(num_samples, seed)
    everything = np.arange(len(a.img_ids))
    point = a.ap(everything) - b.ap(everything)
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return dict(diff=point, lo=float(lo), hi=float(hi), p_better=float((diffs > 0).mean()))
