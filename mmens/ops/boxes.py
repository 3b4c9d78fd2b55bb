"""Box primitives: IoU, format conversion and (de)normalisation.

All functions are pure torch (the format converters also take NumPy arrays),
work on any device, and follow torchvision's conventions: boxes are
``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` order unless the name says ``xywh``.

The IoU formula is written exactly like ensemble-boxes'
(``inter / (area_a + area_b - inter)`` with ``inter = max(xB - xA, 0) *
max(yB - yA, 0)``) so that, in float64, results are bit-identical to the
reference implementation -- the fusion code relies on that for parity of the
strict ``iou > thr`` decisions.
"""
from typing import TypeVar, Union

import numpy as np
import torch
from torch import Tensor

#: A box array of either library: the format converters return the type they get.
BoxArray = TypeVar('BoxArray', Tensor, np.ndarray)

__all__ = [
    'box_area', 'box_iou', 'xywh_to_xyxy', 'xyxy_to_xywh',
    'normalize_boxes', 'denormalize_boxes'
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of boxes.

    Args:
        boxes (Tensor[..., 4]): ``(x1, y1, x2, y2)`` boxes.

    Returns:
        Tensor[...]: ``(x2 - x1) * (y2 - y1)``, widths and heights clamped
        at 0 (a degenerate box has area 0).
    """
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (
        boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_iou(boxes1: Tensor,
            boxes2: Tensor,
            aligned: bool = False,
            mode: str = 'iou',
            eps: float = 0.0) -> Tensor:
    """IoU (Jaccard index) of two sets of boxes, pairwise or element-wise.

    The only IoU of :mod:`mmens.ops`. Its operation order is ensemble-boxes'
    with ``boxes1`` as the cluster / kept box ("A") and ``boxes2`` as the new
    box ("B"), so float64 results are bit-identical to the reference. Widths
    and heights are clamped at 0 (a degenerate box has area 0) and there is
    no ``+1`` (COCO / torchvision convention).

    Args:
        boxes1 (Tensor[..., N, 4]): ``(x1, y1, x2, y2)`` boxes.
        boxes2 (Tensor[..., M, 4]): ``(x1, y1, x2, y2)`` boxes; with
            ``aligned``, any shape broadcastable with ``boxes1``.
        aligned (bool): IoU of each broadcast pair ``(boxes1[i],
            boxes2[i])`` instead of every pair.
        mode (str): ``'iou'``, or ``'iof'``: intersection over the area of
            ``boxes1`` (COCO's crowd overlap).
        eps (float): lower bound of the denominator (0: none, so two
            zero-area boxes give NaN like torchvision).

    Returns:
        Tensor[..., N, M]: IoU of every pair; with ``aligned``, Tensor[...]
        of each broadcast pair.
    """
    if mode not in ('iou', 'iof'):
        raise ValueError(f"mode must be 'iou' or 'iof', got {mode!r}")
    if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(f'boxes must end in 4, got {tuple(boxes1.shape)} '
                         f'and {tuple(boxes2.shape)}')
    if not aligned:  # [..., N, 1, 4], [..., 1, M, 4]
        boxes1, boxes2 = boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)
    xa = torch.maximum(boxes1[..., 0], boxes2[..., 0])
    ya = torch.maximum(boxes1[..., 1], boxes2[..., 1])
    xb = torch.minimum(boxes1[..., 2], boxes2[..., 2])
    yb = torch.minimum(boxes1[..., 3], boxes2[..., 3])
    inter = (xb - xa).clamp_min(0) * (yb - ya).clamp_min(0)
    area1 = box_area(boxes1)
    den = area1 if mode == 'iof' else area1 + box_area(boxes2) - inter
    return inter / (den.clamp_min(eps) if eps else den)


def xywh_to_xyxy(boxes: BoxArray) -> BoxArray:
    """Convert ``(x, y, w, h)`` boxes (COCO) to ``(x1, y1, x2, y2)``.

    The one xywh/xyxy conversion of mmens: COCO-results files, evaluation and drawing
    all go through it, in NumPy or torch, whichever the caller holds.

    Args:
        boxes (Tensor[..., 4] | np.ndarray[..., 4]): ``(x, y, w, h)`` boxes.

    Returns:
        Tensor[..., 4] | np.ndarray[..., 4]: ``(x, y, x + w, y + h)``, a new array of
        the input's type and dtype.
    """
    xy, wh = boxes[..., :2], boxes[..., 2:]
    if isinstance(boxes, np.ndarray):
        return np.concatenate([xy, xy + wh], axis=-1)
    return torch.cat([xy, xy + wh], dim=-1)


def xyxy_to_xywh(boxes: BoxArray) -> BoxArray:
    """Convert ``(x1, y1, x2, y2)`` boxes to ``(x, y, w, h)`` (COCO).

    Args:
        boxes (Tensor[..., 4] | np.ndarray[..., 4]): ``(x1, y1, x2, y2)`` boxes.

    Returns:
        Tensor[..., 4] | np.ndarray[..., 4]: ``(x1, y1, x2 - x1, y2 - y1)``, a new array
        of the input's type and dtype.
    """
    xy1, xy2 = boxes[..., :2], boxes[..., 2:]
    if isinstance(boxes, np.ndarray):
        return np.concatenate([xy1, xy2 - xy1], axis=-1)
    return torch.cat([xy1, xy2 - xy1], dim=-1)


def _scale(boxes: Tensor, image_sizes: Tensor,
           image_index: Union[Tensor, None]) -> Tensor:
    sizes = torch.as_tensor(image_sizes, device=boxes.device)
    sizes = sizes.to(
        boxes.dtype if boxes.is_floating_point() else torch.float64).reshape(
            -1, 2)  # [I or N, 2]
    if image_index is not None:
        sizes = sizes[image_index]  # [N, 2]
    elif sizes.shape[0] == 1 and boxes.shape[0] != 1:
        sizes = sizes.expand(boxes.shape[0], 2)
    if sizes.shape[0] != boxes.shape[0]:
        raise ValueError(
            f'image_sizes has {sizes.shape[0]} rows, expected one per box '
            f'({boxes.shape[0]}), a single (width, height), or image_index')
    return sizes.repeat(1, 2)  # [N, 4] (w, h, w, h)


def normalize_boxes(boxes: Tensor,
                    image_sizes: Tensor,
                    image_index: Union[Tensor, None] = None) -> Tensor:
    """Divide pixel boxes by their image's ``(width, height)``.

    Args:
        boxes (Tensor[N, 4]): pixel ``(x1, y1, x2, y2)`` boxes.
        image_sizes (Tensor[N, 2] | Tensor[I, 2] | Tensor[2]): ``(width,
            height)`` per box, per image (then give ``image_index``), or one
            size for all boxes.
        image_index (Tensor[N], optional): image of each box, indexing the
            rows of ``image_sizes``.

    Returns:
        Tensor[N, 4]: boxes in ``[0, 1]`` coordinates (if they were inside
        the image). Float64 for integer input.
    """
    if boxes.numel() == 0:
        return boxes.clone() if boxes.is_floating_point() else boxes.double()
    b = boxes if boxes.is_floating_point() else boxes.double()
    return b / _scale(b, image_sizes, image_index)  # [N, 4]


def denormalize_boxes(boxes: Tensor,
                      image_sizes: Tensor,
                      image_index: Union[Tensor, None] = None) -> Tensor:
    """Inverse of :func:`normalize_boxes`: multiply by ``(w, h, w, h)``.

    Args:
        boxes (Tensor[N, 4]): normalised ``(x1, y1, x2, y2)`` boxes.
        image_sizes (Tensor[N, 2] | Tensor[I, 2] | Tensor[2]): see
            :func:`normalize_boxes`.
        image_index (Tensor[N], optional): image of each box.

    Returns:
        Tensor[N, 4]: pixel boxes.
    """
    if boxes.numel() == 0:
        return boxes.clone()
    return boxes * _scale(boxes, image_sizes, image_index)  # [N, 4]
