"""Common front end of the packed fusion ops: validate, normalise, repair."""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .boxes import normalize_boxes
from .validation import check_packed, check_weights, repair_boxes

__all__ = ['Prepared', 'prepare_packed', 'group_key']


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


def prepare_packed(boxes: Tensor,
                   scores: Tensor,
                   labels: Tensor,
                   members: Tensor,
                   images: Optional[Tensor],
                   num_members: int,
                   num_images: int = 1,
                   weights=None,
                   image_sizes: Optional[Tensor] = None,
                   report_image: bool = True) -> Prepared:
    """Validate and normalise packed detections.

    Args:
        boxes (Tensor[M, 4]): ``(x1, y1, x2, y2)``, normalised, or pixels
            when ``image_sizes`` is given.
        scores (Tensor[M]): scores in ``[0, 1]``.
        labels (Tensor[M]): integral labels.
        members (Tensor[M]): member of each box, ``0..N-1``.
        images (Tensor[M] | None): image of each box, ``0..I-1`` (``None``:
            all 0).
        num_members (int): ``N``.
        num_images (int): ``I``.
        weights (Tensor[N] | Sequence[float] | None): member weights.
        image_sizes (Tensor[I, 2], optional): ``(width, height)`` per image.
        report_image (bool): name the image in error messages.

    Returns:
        Prepared: see the class.

    Raises:
        ValueError: malformed input (see :mod:`mmens.ops.validation`).
    """
    boxes = torch.as_tensor(boxes)
    dev = boxes.device
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    boxes = boxes.to(torch.float64).reshape(-1, 4) if boxes.numel() == 0 \
        else boxes.to(torch.float64)
    scores = torch.as_tensor(scores, device=dev).to(torch.float64)
    labels = torch.as_tensor(labels, device=dev)
    members = torch.as_tensor(members, device=dev).long()
    if images is None:
        images = torch.zeros_like(members)
    images = torch.as_tensor(images, device=dev).long()
    check_packed(boxes, scores, labels, members, images, num_members,
                 num_images, report_image)
    labels = labels.long()
    w = check_weights(weights, num_members, dev)
    if image_sizes is not None:
        sizes = torch.as_tensor(image_sizes, dtype=torch.float64).to(dev)
        if sizes.shape != (num_images, 2) or not bool(
            (torch.isfinite(sizes) & (sizes > 0)).all()):
            raise ValueError("field 'image_sizes' must be a finite positive "
                             f'[{num_images}, 2] (width, height) tensor')
        boxes = normalize_boxes(boxes, sizes, images)
    boxes, valid = repair_boxes(boxes, members)
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
    lo, hi = torch.stack((labels.min(), labels.max())).tolist()
    return images * (hi - lo + 1) + (labels - lo)
