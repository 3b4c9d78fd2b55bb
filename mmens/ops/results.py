"""The fused detections of a batch, per image: ranked, cut to the top ones, in pixels (torch
only: the file tools use it without mmdet)."""
from typing import Tuple

import torch
from torch import Tensor


def rank_results(boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor,
                 image_sizes: Tensor, max_per_img: int = 100, score_thr: float = 0.0
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused detections of a batch, ranked per image and in pixels.

    Args:
        boxes (Tensor): ``[K, 4]`` normalised ``x1, y1, x2, y2``.
        scores (Tensor): ``[K]``. labels (Tensor): ``[K]``. images (Tensor): ``[K]``.
        image_sizes (Tensor): ``[B, 2]`` ``(width, height)``.
        max_per_img (int): keep the ``max_per_img`` highest scores of each image.
        score_thr (float): drop scores below it.

    Returns:
        ``boxes [K', 4]`` pixels, ``scores``, ``labels``, ``images`` ``[K']``, sorted by
        image, then by score (descending, stable), at most ``max_per_img`` per image
        (:func:`mmens.models.utils.split_results` splits them by image).
    """
    num_images = image_sizes.shape[0]
    keep = scores >= score_thr  # [K]
    if not bool(keep.all()):
        boxes, scores, labels, images = boxes[keep], scores[keep], labels[keep], images[keep]
    # sort by (image, score desc), then rank within the image. The fusion ops return their
    # boxes in this order already: the two stable sorts would then be the identity, and
    # they cost most of the ranking, so they run only when the check finds disorder
    in_order = (images[1:] > images[:-1]) | (
        (images[1:] == images[:-1]) & (scores[1:] <= scores[:-1]))  # [K - 1]
    if not bool(in_order.all()):
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(images[order], stable=True)]  # [K]
        boxes, scores, labels, images = (boxes[order], scores[order], labels[order],
                                         images[order])
    counts = torch.bincount(images, minlength=num_images)  # [B]
    starts = torch.cumsum(counts, 0) - counts  # [B]
    rank = torch.arange(len(images), device=images.device) - starts[images]  # [K]
    keep = rank < max_per_img
    if not bool(keep.all()):
        boxes, scores, labels, images = boxes[keep], scores[keep], labels[keep], images[keep]
    boxes = boxes * image_sizes[images].repeat(1, 2)  # [K, 4] pixels
    return boxes, scores, labels, images
