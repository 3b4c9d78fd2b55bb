"""COCO AP's localisation requirement as a loss: the IoU thresholds a matched box misses."""
from typing import Sequence

import torch
from torch import Tensor

from .targets import box_iou

#: COCO's IoU thresholds of AP (.50:.05:.95).
COCO_IOU_THRS = tuple(0.5 + 0.05 * i for i in range(10))


def iou_threshold_misses(boxes: Tensor, gt_boxes: Tensor,
                         thresholds: Sequence[float] = COCO_IOU_THRS,
                         tau: float = 0.02) -> Tensor:
    """Share of the IoU ``thresholds`` that each box misses against its ground truth.

    COCO AP averages AP over IoU thresholds .50 to .95: a detection counts as a true positive
    only at the thresholds its IoU reaches. With the boxes ranked perfectly, AP is one minus
    the (class-averaged) mean of this term over the matched boxes, so it is the localisation
    part of AP in AP's own units (an L1 distance is not: it weighs a small box's error the
    same as a large one's). Smoothed by a sigmoid of temperature ``tau`` (``tau -> 0``: the
    exact count), so that it is differentiable in the boxes.

    Args:
        boxes (Tensor): ``[..., C, 4]`` x1y1x2y2 boxes (any frame shared with ``gt_boxes``;
            IoU does not change when x and y are scaled).
        gt_boxes (Tensor): ``[C, 4]`` the matched ground truth of each box.
        thresholds (Sequence[float]): IoU thresholds (COCO's by default).
        tau (float): temperature of the smooth step (> 0).

    Returns:
        Tensor[..., C]: in [0, 1]; 1 - mean_t sigmoid((IoU - t) / tau).
    """
    if tau <= 0:
        raise ValueError(f'iou_threshold_misses: tau must be > 0, got {tau!r}')
    if boxes.shape[-1] != 4 or tuple(gt_boxes.shape) != tuple(boxes.shape[-2:]):
        raise ValueError('iou_threshold_misses: boxes must be [..., C, 4] and gt_boxes '
                         f'[C, 4], got {list(boxes.shape)} and {list(gt_boxes.shape)}')
    if boxes.shape[-2] == 0:
        return boxes.new_zeros(boxes.shape[:-1])
    iou = box_iou(boxes, gt_boxes.expand_as(boxes), aligned=True)  # [..., C]
    t = torch.as_tensor(thresholds, dtype=iou.dtype, device=iou.device)  # [T]
    return 1.0 - torch.sigmoid((iou[..., None] - t) / tau).mean(-1)
