"""Helpers shared by the ensemble detectors: member selection, ground truth and targets of
the clusters, and packing of results.

The normalised member boxes of a packed batch: :meth:`mmens.ops.PackedDetections.from_batch_inputs`.
"""
from typing import List, Tuple

import torch
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from mmens.ops.results import rank_results
from mmens.ops.targets import assign_targets


def select_members(packed: dict, selection: Tensor) -> dict:
    """The boxes of a packed batch whose member is selected for their image.

    Args:
        packed (dict): ``bboxes [M, 4]``, ``scores``, ``labels``, ``members``, ``images``
            ``[M]`` and ``image_sizes [B, 2]``.
        selection (Tensor): ``[B, N]`` 0/1 (member n used on image b when > 0.5).

    Returns:
        dict: the same keys, boxes of unselected members left out (``image_sizes`` kept).
    """
    keep = selection[packed['images'], packed['members']] > 0.5  # [M]
    return {k: (v if k == 'image_sizes' else v[keep]) for k, v in packed.items()}


def pack_gt(samples: SampleList, image_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ground truth of a batch, flat and normalised.

    Returns:
        boxes ``[G, 4]`` (normalised xyxy), labels ``[G]``, image index ``[G]``,
        ignore ``[G]`` bool (COCO crowd boxes, from ``ignored_instances``).
    """
    device = image_sizes.device
    boxes, labels, images, ignore = [], [], [], []
    for b, s in enumerate(samples):
        for inst, flag in ((s.gt_instances, False), (s.get('ignored_instances', None), True)):
            if inst is None or 'bboxes' not in inst:
                continue
            t = inst.bboxes.tensor if hasattr(inst.bboxes, 'tensor') else inst.bboxes
            t = t.to(device).float().reshape(-1, 4)  # [G_b, 4]
            boxes.append(t / image_sizes[b].repeat(2))
            labels.append(inst.labels.to(device).long().reshape(-1))
            images.append(torch.full((len(t),), b, device=device, dtype=torch.long))
            ignore.append(torch.full((len(t),), flag, device=device, dtype=torch.bool))
    if not boxes:
        z = torch.zeros(0, device=device)
        return z.reshape(0, 4), z.long(), z.long(), z.bool()
    return torch.cat(boxes), torch.cat(labels), torch.cat(images), torch.cat(ignore)


def cluster_targets(clusters, samples: SampleList, image_sizes: Tensor, iou_thr: float):
    """The targets (:func:`mmens.ops.targets.assign_targets`) of the fused boxes of
    ``clusters`` against the ground truth of ``samples`` (crowd boxes ignored)."""
    gt_boxes, gt_labels, gt_images, gt_ignore = pack_gt(samples, image_sizes)
    return assign_targets(clusters.fused_boxes, clusters.fused_scores, clusters.labels,
                          clusters.image_index, gt_boxes, gt_labels, gt_images,
                          iou_thr=iou_thr, gt_ignore=gt_ignore)


def split_results(boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor,
                  image_sizes: Tensor, max_per_img: int = 100,
                  score_thr: float = 0.0) -> List[InstanceData]:
    """Turn fused detections of a batch into one ``InstanceData`` per image.

    Args:
        boxes (Tensor): ``[K, 4]`` normalised ``x1, y1, x2, y2``.
        scores (Tensor): ``[K]``. labels (Tensor): ``[K]``. images (Tensor): ``[K]``.
        image_sizes (Tensor): ``[B, 2]`` ``(width, height)``.
        max_per_img (int): keep the ``max_per_img`` highest scores of each image (COCO
            evaluates 100). score_thr (float): drop scores below it.

    Returns:
        list[InstanceData]: per image, ``bboxes`` in pixels, ``scores``, ``labels``.
    """
    num_images = image_sizes.shape[0]
    boxes, scores, labels, images = rank_results(boxes, scores, labels, images, image_sizes,
                                                 max_per_img, score_thr)
    sizes = torch.bincount(images, minlength=num_images).tolist()  # one sync per batch
    results = []
    for b, s, l in zip(boxes.split(sizes), scores.split(sizes), labels.split(sizes)):
        inst = InstanceData()
        inst.bboxes, inst.scores, inst.labels = b, s, l.long()
        results.append(inst)
    return results
