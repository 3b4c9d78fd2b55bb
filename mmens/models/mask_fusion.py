"""The fused masks of a packed batch: WBF's clusters (:func:`~mmens.ops.match_boxes`),
and each kept cluster's mask, the weighted mean of its boxes' masks thresholded
(:func:`~mmens.ops.masks.fuse_cluster_masks`). In the models layer because
:class:`~mmens.models.detectors.MaskFusionDetector` calls it, and ``mmens.apis`` (the file
tools' path) builds on it."""
from typing import Dict, List, Tuple

import torch

from mmens.datasets.coco_masks import masks_to_rles
from mmens.ops import PackedDetections, match_boxes
from mmens.ops.masks import (MaskRuns, cluster_regions, fuse_cluster_masks,
                             rle_encode_counts, runs_to_counts)

__all__ = ['encode_runs', 'fuse_packed_masks']


def encode_runs(runs: MaskRuns, heights: torch.Tensor, widths: torch.Tensor) -> List[dict]:
    """COCO ``segmentation`` RLE dicts of masks (``heights``, ``widths``: ``[J]``)."""
    counts, offsets = runs_to_counts(runs, heights * widths)
    texts = rle_encode_counts(counts.cpu().numpy(), offsets.cpu().numpy())
    return masks_to_rles(texts, heights.tolist(), widths.tolist())


@torch.no_grad()
def fuse_packed_masks(model, part: Dict[str, torch.Tensor], runs: MaskRuns,
                      mask_thr: float = 0.5, vote: bool = False, max_per_img: int = 100
                      ) -> Tuple[tuple, List[dict]]:
    """WBF with masks of a packed batch (``part``: ``bboxes`` pixels, ``scores``,
    ``labels``, ``members`` in the model's order, ``images``, ``image_sizes``; ``runs``: a
    mask per box), for any ``model`` with ``members``, ``weights`` and WBF's
    ``fusion_cfg`` (``FixedEnsemble``, ``MaskFusionDetector``).

    Returns:
        tuple: ``(boxes [K, 4] pixels, scores [K], labels [K], images [K])`` by image, then
        score (at most ``max_per_img`` per image), and ``K`` RLE ``segmentation`` dicts.
    """
    sizes = part['image_sizes']
    dets = PackedDetections.from_batch_inputs(part, len(model.members))
    cl = match_boxes(dets, weights=model.weights, **model.fusion_cfg)
    images = cl.image_index  # [C] by image, then score descending
    counts = torch.bincount(images, minlength=len(sizes))  # [B]
    first = torch.cumsum(counts, 0) - counts  # [B]
    rank = torch.arange(len(images), device=images.device) - first[images]  # [C]
    kept = rank < max_per_img  # [C] WBF's top max_per_img per image, as fuse_results
    new_id = torch.cumsum(kept.long(), 0) - 1
    valid = cl.box_cluster >= 0  # [M]
    box_cluster = torch.full_like(cl.box_cluster, -1)  # [M] kept cluster of each box
    box_cluster[valid] = torch.where(kept[cl.box_cluster[valid]],
                                     new_id[cl.box_cluster[valid]], -1)
    images = images[kept]
    wh = sizes[images]  # [K, 2]
    boxes = cl.fused_boxes[kept] * wh.repeat(1, 2)  # [K, 4] pixels
    regions = cluster_regions(part['bboxes'], box_cluster, len(images), wh, runs)
    weights = part['scores'].double() * model.weights.double()[part['members']]  # WBF's
    fused = fuse_cluster_masks(runs, box_cluster, weights, regions, wh[:, 1].long(),
                               mask_thr=mask_thr, vote=vote)
    rles = encode_runs(fused, wh[:, 1].long(), wh[:, 0].long())
    return (boxes, cl.fused_scores[kept], cl.labels[kept], images), rles
