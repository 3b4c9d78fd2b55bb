"""COCO evaluation of fused detections.

The names are imported on first use (:func:`mmens.utils.lazy.lazy_exports`): COCO AP of
results (:mod:`.coco_eval`) needs pycocotools, the metric of a Runner needs mmdet.
"""
from mmens.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'subset_coco_metric': ['SubsetCocoMetric']})
