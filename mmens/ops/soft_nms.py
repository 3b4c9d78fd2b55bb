"""Soft-NMS, batched, with ensemble-boxes 1.0.9 parity (``soft_nms``).

ensemble-boxes' ``cpu_soft_nms_float`` walks the boxes of a label in input
order; at step ``i`` it swaps the box at position ``i`` with the first box
of maximal current score after it (only if that score is strictly larger),
then multiplies the scores of all later boxes by a decay of their IoU with
box ``i``. Boxes whose final decayed score is ``> thresh`` are returned in
position order. We replay exactly that, for all ``(image, label)`` groups
at once: groups are bucketed by size (powers of two) and padded inside a
bucket, so a step costs ``O(active_groups * bucket_size)``.

Bug kept for parity: ensemble-boxes returns the *original* (weighted)
scores of the surviving boxes, not their decayed scores, so soft-NMS only
filters. Pass ``return_decayed_scores=True`` for the decayed scores.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import kernel
from .boxes import box_iou
from .layout import take
from .nms import finish, nms_scores, run_nms_batch
from .packed import PackedDetections
from .prepare import Prepared, layout_groups, prepare_packed

__all__ = ['soft_nms', 'soft_nms_batch', 'soft_nms_packed']


def _soft_nms_bucket(boxes: Tensor, scores: Tensor, start: Tensor,
                     size: Tensor, method: int, iou_thr: float, sigma: float,
                     thresh: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Replay ``cpu_soft_nms_float`` on groups padded to ``P = size[0]``.

    Args:
        boxes (Tensor[K, 4]), scores (Tensor[K]): layout-ordered boxes and
            (weighted) scores.
        start (Tensor[Gb]), size (Tensor[Gb]): the bucket's groups, by
            decreasing size.
        method, iou_thr, sigma, thresh: see :func:`soft_nms_packed`.

    Returns:
        tuple: layout position, final position in the group and decayed
        score of each surviving box (``[S]`` each).
    """
    dev = boxes.device
    p = int(size[0])
    ar = torch.arange(p, device=dev)  # [P]
    valid = ar < size[:, None]  # [Gb, P]
    pos = torch.where(valid, start[:, None] + ar, 0)  # [Gb, P]
    bx = boxes[pos]  # [Gb, P, 4] boxes in current position order
    sc = torch.where(valid, scores[pos], float('-inf'))  # [Gb, P]
    ix = torch.where(valid, pos, -1)  # [Gb, P] layout position
    hist = torch.bincount(size, minlength=p + 1)
    act = torch.flip(torch.cumsum(torch.flip(hist, (0, )), 0),
                     (0, ))[1:].tolist()  # [P] groups with size > i
    for i in range(p - 1):
        a = act[i]
        rows = torch.arange(a, device=dev)  # [A]
        rest = sc[:a, i + 1:]  # [A, P-i-1]
        mp = rest.argmax(1)  # [A] first max
        q = mp + (i + 1)  # [A]
        swap = sc[:a, i] < rest.gather(1, mp[:, None])[:, 0]  # [A]
        for t in (sc, ix, bx):  # swap positions i and q where needed
            vi, vq = t[rows, i], t[rows, q]
            sw = swap.view(-1, *([1] * (vi.dim() - 1)))
            t[rows, q] = torch.where(sw, vi, vq)
            t[rows, i] = torch.where(sw, vq, vi)
        ovr = box_iou(bx[:a, i:i + 1], bx[:a, i + 1:], aligned=True)  # [A, P-i-1]
        if method == 1:
            wgt = torch.where(ovr > iou_thr, 1 - ovr, 1.0)
        else:
            wgt = torch.exp(-(ovr * ovr) / sigma)
        rest = sc[:a, i + 1:]
        sc[:a, i + 1:] = torch.where(valid[:a, i + 1:], wgt * rest, rest)
    sel = valid & (sc > thresh)  # [Gb, P]
    return ix[sel], ar.expand_as(sel)[sel], sc[sel]


def _soft_nms(prep: Prepared, weighted: bool, method: int, iou_thr: float,
              sigma: float, thresh: float, class_agnostic: bool,
              decayed: bool) -> Dict[str, Tensor]:
    scores = nms_scores(prep, weighted)
    if kernel.use_kernel(prep.boxes):
        sel, rank, dsc = kernel._ext.soft_nms(
            prep.boxes.contiguous(), scores.contiguous(),
            prep.labels.contiguous(), prep.images.contiguous(), prep.valid,
            prep.num_images, int(method), float(iou_thr), float(sigma),
            float(thresh), bool(class_agnostic))
        return dict(boxes=take(prep.boxes, sel),
                    scores=dsc if decayed else take(scores, sel),
                    labels=take(prep.labels, sel),
                    images=take(prep.images, sel), rank=rank,
                    label_order=not class_agnostic)  # by image, label, rank
    lay, idx, _ = layout_groups(prep, prep.valid,
                                class_agnostic)  # packed order in groups
    lb, ls = take(prep.boxes, idx), take(scores, idx)  # [K, 4], [K]
    # buckets of groups with size in (2^(e-1), 2^e]
    expo = torch.ceil(torch.log2(lay.size.double())).long()  # [G]
    parts = []
    g0 = 0
    for nb in torch.unique_consecutive(expo, return_counts=True)[1].tolist():
        g = slice(g0, g0 + nb)
        g0 += nb
        parts.append(
            _soft_nms_bucket(lb, ls, lay.start[g], lay.size[g], method,
                             iou_thr, sigma, thresh))
    if parts:
        lpos, rank, dsc = (torch.cat(x) for x in zip(*parts))
    else:
        lpos = rank = torch.zeros(0, dtype=torch.long, device=lb.device)
        dsc = ls[:0]
    sel = take(idx, lpos)  # [S] packed index of the surviving boxes
    return dict(boxes=take(prep.boxes, sel),
                scores=dsc if decayed else take(scores, sel),
                labels=take(prep.labels, sel), images=take(prep.images, sel),
                rank=rank)


@torch.no_grad()
def soft_nms_packed(dets: PackedDetections,
                    *,
                    weights: Optional[Tensor] = None,
                    method: int = 2,
                    iou_thr: float = 0.5,
                    sigma: float = 0.5,
                    thresh: float = 0.001,
                    class_agnostic: bool = False,
                    image_sizes: Optional[Tensor] = None,
                    return_decayed_scores: bool = False,
                    _packed_order: bool = True,
                    _report_image: bool = True) -> Tuple[Tensor, ...]:
    """Soft-NMS on packed detections of many images at once.

    Args:
        dets, class_agnostic, image_sizes: see
            :func:`~mmens.ops.wbf.weighted_boxes_fusion_packed`.
        weights (Tensor[N], optional): scores become ``score * w / sum(w)``.
        method (int): 1 linear (``1 - IoU`` if ``IoU > iou_thr``), 2
            gaussian (``exp(-IoU^2 / sigma)``), 3 hard (0 if
            ``IoU > iou_thr``; this runs :func:`~mmens.ops.nms.nms_packed`,
            without ``thresh``, like ensemble-boxes).
        iou_thr (float): threshold of methods 1 and 3.
        sigma (float): gaussian width.
        thresh (float): keep boxes whose decayed score is ``> thresh``.
        return_decayed_scores (bool): fix for ensemble-boxes' bug of
            returning the original scores (see module doc).

    Returns:
        tuple: ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` (long),
        ``images [K]``; sorted by image then (returned) score descending.
    """
    prep = prepare_packed(dets, weights, image_sizes, _report_image,
                          method=method, iou_thr=iou_thr, sigma=sigma,
                          thresh=thresh, class_agnostic=class_agnostic,
                          return_decayed_scores=return_decayed_scores)
    if method == 3:
        from .nms import _hard_nms
        r = _hard_nms(prep, weights is not None, iou_thr, class_agnostic)
    else:
        r = _soft_nms(prep, weights is not None, method, iou_thr, sigma,
                      thresh, class_agnostic, return_decayed_scores)
    return finish(prep, r, _packed_order)


def soft_nms_batch(images: Sequence[Tuple[Sequence, Sequence, Sequence]],
                   method: int = 2,
                   iou_thr: float = 0.5,
                   sigma: float = 0.5,
                   thresh: float = 0.001,
                   weights=None,
                   return_decayed_scores: bool = False,
                   _report_image: bool = True) -> List[Tuple]:
    """:func:`soft_nms` for a batch of images in one pass.

    Args:
        images (Sequence[tuple]): ``(boxes_list, scores_list, labels_list)``
            per image.
        method, iou_thr, sigma, thresh, weights, return_decayed_scores: see
            :func:`soft_nms`.

    Returns:
        list[tuple]: ``(boxes, scores, labels)`` per image.
    """
    return run_nms_batch(soft_nms_packed, images, _report_image, weights,
                         method=method, iou_thr=iou_thr, sigma=sigma,
                         thresh=thresh,
                         return_decayed_scores=return_decayed_scores)


def soft_nms(boxes: Sequence,
             scores: Sequence,
             labels: Sequence,
             method: int = 2,
             iou_thr: float = 0.5,
             sigma: float = 0.5,
             thresh: float = 0.001,
             weights=None,
             return_decayed_scores: bool = False) -> Tuple:
    """Drop-in for ``ensemble_boxes.soft_nms`` (1.0.9).

    Args:
        boxes (Sequence[array[n_i, 4]]): normalised boxes per member.
        scores (Sequence[array[n_i]]): scores per member.
        labels (Sequence[array[n_i]]): labels per member.
        method (int): 1 linear, 2 gaussian, 3 hard NMS.
        iou_thr (float): IoU threshold (methods 1, 3).
        sigma (float): gaussian sigma (method 2).
        thresh (float): keep boxes whose decayed score is ``> thresh``.
        weights (Sequence[float], optional): scores become
            ``score * w / sum(w)``.
        return_decayed_scores (bool): return decayed scores (fix; default
            ``False`` returns the original scores like ensemble-boxes).

    Returns:
        tuple: ``boxes``, ``scores``, ``labels`` in ensemble-boxes' order
        (label ascending, then selection order). Differences as in
        :func:`~mmens.ops.nms.nms`; ``method`` outside 1-3 raises.
    """
    return soft_nms_batch([(boxes, scores, labels)],
                          method,
                          iou_thr,
                          sigma,
                          thresh,
                          weights,
                          return_decayed_scores,
                          _report_image=False)[0]
