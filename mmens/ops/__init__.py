"""Pure-torch box ops of mmens (never imports mmdet/mmcv/mmengine).

Fusion (ensemble-boxes 1.0.9 parity, batched over images, CPU/CUDA):
list API ``weighted_boxes_fusion`` / ``nms`` / ``soft_nms`` /
``non_maximum_weighted`` (+ ``*_batch`` over images), packed tensor API
``*_packed`` on :class:`PackedDetections` (+ :data:`FUSION_METHODS`), and
:func:`match_boxes` giving the WBF clusters with per-member predictions
(:class:`Clusters`). Needs torch and numpy only.
"""
from .boxes import (box_area, box_iou, denormalize_boxes, normalize_boxes,
                    xywh_to_xyxy, xyxy_to_xywh)
from .clustering import CONF_TYPES, Clusters, match_boxes
from .fusion import FUSION_METHODS
from .knapsack import PerturbedSelector, knapsack, topk_mask
from .nms import nms, nms_batch, nms_packed
from .packed import PackedDetections
from .perturbed import perturbed_select
from .perturbed_loss import perturbed_loss_grad
from .nmw import (non_maximum_weighted, non_maximum_weighted_batch,
                  non_maximum_weighted_packed)
from .soft_nms import soft_nms, soft_nms_batch, soft_nms_packed
from .validation import (check_member_lists, check_packed, check_weights,
                         repair_boxes)
from .wbf import (weighted_boxes_fusion, weighted_boxes_fusion_batch,
                  weighted_boxes_fusion_packed)

__all__ = [
    'box_area', 'box_iou', 'denormalize_boxes', 'PackedDetections',
    'normalize_boxes', 'xywh_to_xyxy', 'xyxy_to_xywh', 'CONF_TYPES',
    'Clusters', 'match_boxes', 'FUSION_METHODS', 'PerturbedSelector', 'knapsack',
    'topk_mask', 'perturbed_select', 'perturbed_loss_grad', 'nms', 'nms_batch',
    'nms_packed', 'non_maximum_weighted', 'non_maximum_weighted_batch',
    'non_maximum_weighted_packed', 'soft_nms', 'soft_nms_batch',
    'soft_nms_packed', 'check_member_lists', 'check_packed', 'check_weights',
    'repair_boxes', 'weighted_boxes_fusion', 'weighted_boxes_fusion_batch',
    'weighted_boxes_fusion_packed'
]
