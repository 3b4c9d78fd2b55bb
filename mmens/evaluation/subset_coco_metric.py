"""COCO metric restricted to the images that were evaluated."""
from typing import Dict

from mmdet.evaluation import CocoMetric
from mmens.registry import METRICS


@METRICS.register_module()
class SubsetCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric`` scored on the images that received results only.

    ``CocoMetric`` evaluates every image of its annotation file, so a run over a subset
    (a cross-validation fold, a shard) would count the other images' objects as missed.
    This metric sets ``img_ids`` to the images processed in the run (gathered over all
    ranks), and is otherwise identical (pycocotools ``COCOeval``).
    """

    def compute_metrics(self, results: list) -> Dict[str, float]:
        self.img_ids = sorted({int(pred['img_id']) for _, pred in results})
        try:
            return super().compute_metrics(results)
        finally:
            self.img_ids = None
