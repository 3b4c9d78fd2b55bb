"""Mask (``segm``) COCO AP of COCO-results entries that carry ``segmentation``, and its
paired bootstrap over images."""
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from .coco_eval import CocoEvaluation
from .fast_coco_ap import pool_tables, resample_aps


def coco_segm_metrics(coco_gt: COCO, results: List[dict],
                      img_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO mask AP, AP50, AP75, APs, APm, APl (maxDets 100) of ``results``.

    The entries are scored by their ``segmentation`` alone: as mmdet's ``CocoMetric``
    does for ``segm``, their ``bbox`` is left out, so that pycocotools takes each
    detection's area (the APs/APm/APl ranges) from its mask, not from its box.
    """
    return SegmEvaluation(coco_gt, results, img_ids).metrics()


class SegmEvaluation(CocoEvaluation):
    """:class:`~mmens.evaluation.coco_eval.CocoEvaluation` of masks (``segm``):
    ``COCOeval.evaluate()`` once; :meth:`metrics` over any multiset of images, and
    :meth:`ap` / ``bootstrap_aps`` (so :func:`~mmens.evaluation.coco_eval.paired_bootstrap`)
    from the compiled accumulator of :mod:`.fast_coco_ap`, fed with pycocotools' own
    matches of the masks (``evalImgs``). The entries' ``bbox`` is left out, as in
    :func:`coco_segm_metrics`."""

    def __init__(self, coco_gt: COCO, results: List[dict],
                 img_ids: Optional[Sequence[int]] = None) -> None:
        self.img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
        self.ap_only, self.empty = False, not results
        self._source, self._pooled = None, None
        self._params = Params(iouType='segm')
        if self.empty:
            return
        self._evaluate(coco_gt, [{k: v for k, v in r.items() if k != 'bbox'} for r in results],
                       'segm')

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        if self.empty:
            return np.zeros(len(samples))
        if self._pooled is None:
            self._pooled = pool_tables(_tables(self._eval_imgs, self._params))
        return resample_aps(self._pooled, self._params.recThrs, samples)


def _tables(eval_imgs: list, params: Params) -> List[Optional[dict]]:
    """:func:`~mmens.evaluation.fast_coco_ap.coco_ap_tables` from pycocotools'
    ``evalImgs`` (area 'all', 100 detections): per category, each image's detections in
    descending score, true and false positives per IoU threshold (a detection matched to
    an ignored ground truth is neither), and the ground truths not ignored."""
    n_area, n_img = len(params.areaRng), len(params.imgIds)
    tables: List[Optional[dict]] = []
    for k in range(len(params.catIds)):
        ims = eval_imgs[k * n_area * n_img:k * n_area * n_img + n_img]  # area 'all' first
        if all(e is None for e in ims):
            tables.append(None)
            continue
        ims = [e or dict(dtScores=[], dtMatches=np.zeros((len(params.iouThrs), 0)),
                         dtIgnore=np.zeros((len(params.iouThrs), 0), bool),
                         gtIgnore=np.zeros(0)) for e in ims]
        count = np.array([len(e['dtScores']) for e in ims], dtype=np.int64)
        matched = np.concatenate([e['dtMatches'] for e in ims], 1) != 0  # [T, D]
        ignored = np.concatenate([e['dtIgnore'] for e in ims], 1).astype(bool)
        tables.append(dict(
            scores=np.concatenate([np.asarray(e['dtScores'], np.float64) for e in ims]),
            tp=matched & ~ignored, fp=~matched & ~ignored, start=np.cumsum(count) - count,
            count=count, npig=np.array([int(np.count_nonzero(np.asarray(e['gtIgnore']) == 0))
                                        for e in ims], dtype=np.int64)))
    return tables
