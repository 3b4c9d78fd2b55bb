"""Mask (``segm``) COCO AP of COCO-results entries that carry ``segmentation``."""
import contextlib
import io
from typing import Dict, List, Optional, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco_eval import METRIC_NAMES, _ap


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
