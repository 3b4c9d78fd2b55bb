from .subset_coco_metric import SubsetCocoMetric

__all__ = ['SubsetCocoMetric']
