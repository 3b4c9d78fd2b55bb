"""Weighted boxes fusion, batched, with ensemble-boxes 1.0.9 parity."""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .clustering import run_wbf
from .listapi import run_packed, unpack_images
from .packed import PackedDetections

__all__ = [
    'weighted_boxes_fusion', 'weighted_boxes_fusion_batch',
    'weighted_boxes_fusion_packed'
]


@torch.no_grad()
def weighted_boxes_fusion_packed(
        dets: PackedDetections,
        *,
        weights: Optional[Tensor] = None,
        iou_thr: float = 0.55,
        skip_box_thr: float = 0.0,
        conf_type: str = 'avg',
        allows_overflow: bool = False,
        class_agnostic: bool = False,
        image_sizes: Optional[Tensor] = None,
        _report_image: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """WBF on packed detections of many images at once.

    Same rule and arithmetic as ``ensemble_boxes.weighted_boxes_fusion``
    applied to each image (see :func:`~mmens.ops.clustering.match_boxes`).
    The keyword arguments and their defaults are WBF's
    (:data:`~mmens.ops.clustering.WBF_DEFAULTS`), which
    :func:`~mmens.ops.clustering.match_boxes` takes too.

    Args:
        dets (PackedDetections): boxes ``Tensor[M, 4]`` normalised (pixels
            with ``image_sizes``), scores, labels, members, images ``[M]``,
            ``N`` and ``I``.
        weights (Tensor[N], optional): member weights (default ones).
        iou_thr (float): match threshold (strict ``>``).
        skip_box_thr (float): drop boxes with ``score < skip_box_thr``.
        conf_type (str): ``'avg'``, ``'max'``, ``'box_and_model_avg'`` or
            ``'absent_model_aware_avg'``: fused-score rule of ensemble-boxes.
        allows_overflow (bool): for ``'avg'``, let the score exceed 1.
        class_agnostic (bool): fuse across labels; a cluster's label is the
            label of its first (highest weighted score) box.
        image_sizes (Tensor[I, 2], optional): ``(width, height)`` per image;
            when given, ``boxes`` are pixels. Outputs are always normalised.

    Returns:
        tuple: ``boxes [K, 4]`` (normalised), ``scores [K]``, ``labels [K]``
        (long), ``images [K]``; sorted by image then score descending.
    """
    prep, r = run_wbf(
        dets, dict(weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
                   conf_type=conf_type, allows_overflow=allows_overflow,
                   class_agnostic=class_agnostic, image_sizes=image_sizes),
        _report_image, with_clusters=False)
    return (r['boxes'].to(prep.dtype), r['scores'].to(prep.dtype), r['labels'],
            r['images'])


def weighted_boxes_fusion_batch(images: Sequence[Tuple[Sequence, Sequence,
                                                       Sequence]],
                                weights=None,
                                iou_thr: float = 0.55,
                                skip_box_thr: float = 0.0,
                                conf_type: str = 'avg',
                                allows_overflow: bool = False,
                                _report_image: bool = True) -> List[Tuple]:
    """:func:`weighted_boxes_fusion` for a batch of images in one pass.

    Args:
        images (Sequence[tuple]): ``(boxes_list, scores_list, labels_list)``
            per image (ensemble-boxes' arguments). All images must have the
            same number of members.
        weights, iou_thr, skip_box_thr, conf_type, allows_overflow: see
            :func:`weighted_boxes_fusion`.

    Returns:
        list[tuple]: ``(boxes, scores, labels)`` per image.
    """
    p, out = run_packed(weighted_boxes_fusion_packed, images, _report_image,
                        weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
                        conf_type=conf_type, allows_overflow=allows_overflow)
    return unpack_images(p, *out, np_dtypes=(np.float64, ) * 3)


def weighted_boxes_fusion(boxes_list: Sequence,
                          scores_list: Sequence,
                          labels_list: Sequence,
                          weights=None,
                          iou_thr: float = 0.55,
                          skip_box_thr: float = 0.0,
                          conf_type: str = 'avg',
                          allows_overflow: bool = False) -> Tuple:
    """Drop-in for ``ensemble_boxes.weighted_boxes_fusion`` (1.0.9).

    Args:
        boxes_list (Sequence[array[n_i, 4]]): normalised ``(x1, y1, x2,
            y2)`` boxes of each member.
        scores_list (Sequence[array[n_i]]): scores of each member.
        labels_list (Sequence[array[n_i]]): labels of each member.
        weights (Sequence[float], optional): member weights (default 1).
        iou_thr (float): IoU for a match (strict ``>``).
        skip_box_thr (float): drop boxes with ``score < skip_box_thr``.
        conf_type (str): ``'avg'``, ``'max'``, ``'box_and_model_avg'`` or
            ``'absent_model_aware_avg'``.
        allows_overflow (bool): let ``'avg'`` scores exceed 1.

    Returns:
        tuple: ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` sorted by
        score descending. NumPy float64 (labels too, like ensemble-boxes)
        for NumPy/list input; torch (input float dtype, long labels, input
        device) for tensor input.

    Differences from ensemble-boxes: malformed input raises
    :class:`ValueError` instead of printing and exiting (also for a wrong
    number of weights, where ensemble-boxes falls back to ones); ``x2 < x1``
    is an error instead of a silent swap; clipping and zero-area skipping
    warn once with counts; a cluster whose boxes all have score 0 keeps its
    first box instead of becoming NaN.
    """
    return weighted_boxes_fusion_batch(
        [(boxes_list, scores_list, labels_list)],
        weights,
        iou_thr,
        skip_box_thr,
        conf_type,
        allows_overflow,
        _report_image=False)[0]
