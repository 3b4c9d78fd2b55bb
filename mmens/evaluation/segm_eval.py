"""Mask (``segm``) COCO AP of COCO-results entries that carry ``segmentation``, and its
paired bootstrap over images."""
import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco_eval import METRIC_NAMES, CocoEvaluation, _ap


def coco_segm_metrics(coco_gt: COCO, results: List[dict],
                      img_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO mask AP, AP50, AP75, APs, APm, APl (maxDets 100) of ``results``.

    The entries are scored by their ``segmentation`` alone: as mmdet's ``CocoMetric``
    does for ``segm``, their ``bbox`` is left out, so that pycocotools takes each
    detection's area (the APs/APm/APl ranges) from its mask, not from its box.
    """
    if not results:
        return {k: 0.0 for k in METRIC_NAMES}
    dts = [{k: v for k, v in r.items() if k != 'bbox'} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(coco_gt, coco_gt.loadRes(dts), 'segm')
        E.params.imgIds = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
        E.evaluate()
        E.accumulate()
    prec = E.eval['precision']
    return dict(AP=_ap(prec), AP50=_ap(prec, 0), AP75=_ap(prec, 5),
                APs=_ap(prec, area=1), APm=_ap(prec, area=2), APl=_ap(prec, area=3))


class SegmEvaluation(CocoEvaluation):
    """:class:`~mmens.evaluation.coco_eval.CocoEvaluation` of masks (``segm``):
    ``COCOeval.evaluate()`` once, then :meth:`metrics` over any multiset of images
    (pycocotools' ``accumulate``; no compiled AP for masks, so no ``ap_only``). The
    entries' ``bbox`` is left out, as in :func:`coco_segm_metrics`."""

    def __init__(self, coco_gt: COCO, results: List[dict],
                 img_ids: Optional[Sequence[int]] = None) -> None:
        self.img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
        self.ap_only, self.empty = False, not results
        if self.empty:
            return
        dts = [{k: v for k, v in r.items() if k != 'bbox'} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            self.E = COCOeval(coco_gt, coco_gt.loadRes(dts), 'segm')
            self.E.params.imgIds = self.img_ids
            self.E.evaluate()
        self._eval_imgs = self.E.evalImgs
        self._params = copy.deepcopy(self.E._paramsEval)


def segm_bootstrap(a: SegmEvaluation, b: SegmEvaluation, num_samples: int = 100,
                   seed: int = 0, alpha: float = 0.05) -> Dict[str, float]:
    """Paired bootstrap over images of mask ``AP(a) - AP(b)``, as
    :func:`~mmens.evaluation.coco_eval.paired_bootstrap` (the same resamples of
    ``RandomState(seed)``), with pycocotools' ``accumulate`` per resample."""
    if a.img_ids != b.img_ids:
        raise ValueError('segm_bootstrap: both evaluations must cover the same images')
    n = len(a.img_ids)
    rng = np.random.RandomState(seed)
    samples = [rng.randint(0, n, n) for _ in range(num_samples)]
    diffs = np.array([a.metrics(s)['AP'] - b.metrics(s)['AP'] for s in samples])
    point = a.metrics()['AP'] - b.metrics()['AP']
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return dict(diff=float(point), lo=float(lo), hi=float(hi),
                p_better=float((diffs > 0).mean()))
