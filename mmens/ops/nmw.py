"""Non-maximum weighted (NMW), batched, with ensemble-boxes 1.0.9 parity."""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import kernel
from .boxes import box_iou
from .greedy import greedy_cluster
from .layout import concat_order, sort_desc_ties_last_first, take
from .listapi import run_packed, unpack_images
from .packed import PackedDetections
from .prepare import layout_groups, prepare_packed

__all__ = [
    'non_maximum_weighted', 'non_maximum_weighted_batch',
    'non_maximum_weighted_packed'
]


@torch.no_grad()
def non_maximum_weighted_packed(
        dets: PackedDetections,
        *,
        weights: Optional[Tensor] = None,
        iou_thr: float = 0.55,
        skip_box_thr: float = 0.0,
        class_agnostic: bool = False,
        image_sizes: Optional[Tensor] = None,
        _report_image: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMW on packed detections of many images at once.

    Per ``(image, label)``: weights are divided by their max, boxes sorted by
    ``score * weight`` descending, each box joins the cluster whose *first*
    box has the highest IoU ``> iou_thr``, else opens one. A cluster's box is
    the mean of its boxes weighted by ``score * IoU(box, first box)``; its
    score is the first box's weighted score (float32, like ensemble-boxes).

    Args:
        dets, weights, class_agnostic, image_sizes: see
            :func:`~mmens.ops.wbf.weighted_boxes_fusion_packed`.
        iou_thr (float): match threshold (strict ``>``).
        skip_box_thr (float): drop boxes with ``score < skip_box_thr``.

    Returns:
        tuple: ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` (long),
        ``images [K]``; sorted by image then score descending.
    """
    prep = prepare_packed(dets, weights, image_sizes, _report_image,
                          iou_thr=iou_thr, skip_box_thr=skip_box_thr,
                          class_agnostic=class_agnostic)
    w = prep.weights
    if prep.num_members:
        w = w / w.max()  # [N] ensemble-boxes divides by the max weight
    keep = prep.valid & (prep.scores >= skip_box_thr)  # [M]
    if kernel.use_kernel(prep.boxes):
        b, s, lab, img = kernel._ext.nmw(
            prep.boxes.contiguous(), prep.scores * take(w, prep.members),
            prep.labels.contiguous(), prep.images.contiguous(), keep,
            prep.num_images, float(iou_thr), bool(class_agnostic))
        return b.to(prep.dtype), s.to(prep.dtype), lab, img
    lay, idx, s = layout_groups(prep, keep, class_agnostic,
                                prep.scores * take(w, prep.members))
    b = take(prep.boxes, idx)  # [K, 4]
    res = greedy_cluster(lay, b, s, s, iou_thr, fused=False)
    leader = take(res.leader, res.slot)  # [K] layout position of the leader
    lead = torch.nonzero(leader == torch.arange(
        b.shape[0], device=b.device))[:, 0]  # [C] leaders, creation order
    c = lead.shape[0]
    cl = take(
        torch.full_like(leader, -1).index_copy_(
            0, lead, torch.arange(c, device=b.device)), leader)  # [K]
    wt = s * box_iou(b, take(b, leader), aligned=True)  # [K] score * IoU(leader)
    num = b.new_zeros(c, 4).index_add_(0, cl, wt[:, None] * b)  # [C, 4]
    conf = s.new_zeros(c).index_add_(0, cl, wt)  # [C]
    fused = torch.where(conf[:, None] > 0,
                        num / conf.clamp(min=1e-300)[:, None],
                        take(b, lead)).float().double()  # [C, 4]
    score = take(s, lead).float().double()  # [C] float32 like the reference
    cidx = take(idx, lead)  # [C]
    cimg = take(prep.images, cidx)  # [C]
    perm = sort_desc_ties_last_first(score, cimg,
                                     concat_order(lay, lead))  # [C]
    return (take(fused, perm).to(prep.dtype), take(score, perm).to(prep.dtype),
            take(prep.labels, take(cidx, perm)), take(cimg, perm))


def non_maximum_weighted_batch(images: Sequence[Tuple[Sequence, Sequence,
                                                      Sequence]],
                               weights=None,
                               iou_thr: float = 0.55,
                               skip_box_thr: float = 0.0,
                               _report_image: bool = True) -> List[Tuple]:
    """:func:`non_maximum_weighted` for a batch of images in one pass.

    Args:
        images (Sequence[tuple]): ``(boxes_list, scores_list, labels_list)``
            per image.
        weights, iou_thr, skip_box_thr: see :func:`non_maximum_weighted`.

    Returns:
        list[tuple]: ``(boxes, scores, labels)`` per image.
    """
    p, out = run_packed(non_maximum_weighted_packed, images, _report_image,
                        weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr)
    return unpack_images(p, *out, np_dtypes=(np.float32, ) * 3)


def non_maximum_weighted(boxes_list: Sequence,
                         scores_list: Sequence,
                         labels_list: Sequence,
                         weights=None,
                         iou_thr: float = 0.55,
                         skip_box_thr: float = 0.0) -> Tuple:
    """Drop-in for ``ensemble_boxes.non_maximum_weighted`` (1.0.9).

    Args:
        boxes_list (Sequence[array[n_i, 4]]): normalised boxes per member.
        scores_list (Sequence[array[n_i]]): scores per member.
        labels_list (Sequence[array[n_i]]): labels per member.
        weights (Sequence[float], optional): member weights (default 1).
        iou_thr (float): IoU for a match (strict ``>``).
        skip_box_thr (float): drop boxes with ``score < skip_box_thr``.

    Returns:
        tuple: ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` sorted by
        score descending; NumPy float32 like ensemble-boxes (float64 zeros
        when empty) or torch for tensor input. The fused box is computed in
        float64 (ensemble-boxes accumulates in float32: differences are
        below 1e-6). Labels come back as float32 too, exact for
        ``|label| <= 2**24``. Errors and repairs as in
        :func:`~mmens.ops.wbf.weighted_boxes_fusion`.
    """
    return non_maximum_weighted_batch([(boxes_list, scores_list, labels_list)],
                                      weights,
                                      iou_thr,
                                      skip_box_thr,
                                      _report_image=False)[0]
