"""Common front end of the packed fusion ops: validate, normalise, repair."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .boxes import normalize_boxes
from .layout import GroupLayout, build_layout, take
from .packed import PackedDetections
from .validation import repair_boxes, validate_fusion

__all__ = ['Prepared', 'prepare_packed', 'group_key', 'layout_groups']


class Prepared(NamedTuple):
    """Validated packed detections, float64 and normalised.

    Attributes:
        boxes (Tensor[M, 4]): clipped normalised boxes (float64).
        scores (Tensor[M]): raw scores (float64).
        labels (Tensor[M]): labels (long).
        members (Tensor[M]): member index (long).
        images (Tensor[M]): image index (long).
        weights (Tensor[N]): member weights (float64).
        valid (Tensor[M]): bool, box has non-zero area.
        dtype (torch.dtype): floating dtype for the outputs.
        num_members (int): ``N``.
        num_images (int): ``I``.
    """
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    members: Tensor
    images: Tensor
    weights: Tensor
    valid: Tensor
    dtype: torch.dtype
    num_members: int
    num_images: int


def prepare_packed(dets: PackedDetections,
                   weights=None,
                   image_sizes: Optional[Tensor] = None,
                   report_image: bool = True,
                   **params) -> Prepared:
    """Validate and normalise packed detections (the front end of every
    fusion op, on both backends).

    Args:
        dets (PackedDetections): the detections; boxes normalised, or pixels
            when ``image_sizes`` is given.
        weights (Tensor[N] | Sequence[float] | None): member weights.
        image_sizes (Tensor[I, 2], optional): ``(width, height)`` per image.
        report_image (bool): name the image in error messages.
        **params: the op's scalar parameters (``iou_thr``, ...), checked by
            :func:`~mmens.ops.validation.check_params`.

    Returns:
        Prepared: see the class.

    Raises:
        TypeError, ValueError: malformed input (see
        :func:`~mmens.ops.validation.validate_fusion`).
    """
    dets, w, sizes = validate_fusion(dets, weights, image_sizes, report_image,
                                     **params)
    boxes, scores, labels, members, images, num_members, num_images = dets
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    boxes, scores = boxes.to(torch.float64), scores.to(torch.float64)
    labels = labels.long()
    if sizes is not None:
        boxes = normalize_boxes(boxes, sizes, images)
    # list API input comes repaired (and checked) by its packer
    boxes, valid = repair_boxes(boxes, members, getattr(dets, 'repair', None))
    return Prepared(boxes, scores, labels, members, images, w, valid, dtype,
                    num_members, num_images)


def group_key(labels: Tensor,
              images: Tensor,
              class_agnostic: bool = False) -> Tensor:
    """Long key identifying the ``(image, label)`` group of each box.

    Args:
        labels (Tensor[K]): labels.
        images (Tensor[K]): image indices.
        class_agnostic (bool): group by image only.

    Returns:
        Tensor[K]: key, increasing with image then label.
    """
    if class_agnostic or labels.numel() == 0:
        return images.clone()
    lo, hi, last = torch.stack(
        (labels.min(), labels.max(), images.max())).tolist()
    if (hi - lo + 1) * (last + 1) >= 2**62:  # sparse labels: dense ids
        labels = torch.unique(labels, return_inverse=True)[1]
        lo, hi = 0, int(labels.max())
    return images * (hi - lo + 1) + (labels - lo)


def layout_groups(
        prep: Prepared,
        keep: Tensor,
        class_agnostic: bool = False,
        key: Optional[Tensor] = None
) -> Tuple[GroupLayout, Tensor, Optional[Tensor]]:
    """Lay the kept boxes out by ``(image, label)`` group (see
    :func:`~mmens.ops.layout.build_layout`).

    Args:
        prep (Prepared): the prepared detections.
        keep (Tensor[M]): bool, boxes to lay out.
        class_agnostic (bool): group by image only.
        key (Tensor[M], optional): order inside a group (descending, ties
            later packed box first); ``None`` keeps the packed order.

    Returns:
        tuple: the ``GroupLayout`` of the ``K`` kept boxes, the packed index
        of the box at each layout position ``[K]`` and ``key`` in layout
        order ``[K]`` (``None`` without ``key``).
    """
    kept = torch.nonzero(keep)[:, 0]  # [K]
    kk = None if key is None else take(key, kept)  # [K]
    lay = build_layout(
        group_key(take(prep.labels, kept), take(prep.images, kept),
                  class_agnostic), kk)
    idx = take(kept, lay.order)  # [K] packed index per layout position
    return lay, idx, None if kk is None else take(kk, lay.order)
