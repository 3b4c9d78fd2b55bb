"""Per-cluster features for a conditional rescoring / Θ-weighting net.

:func:`cluster_features` maps the matcher's outputs (``Clusters`` fields) to a
``Tensor[C, F]``; :func:`feature_names` gives the F column names. Columns:

=============================  =================================================
``score_i`` (N)                member i's score in the cluster, 0 if absent
``present_i`` (N)              1 if member i has a box in the cluster
``frac_present``               members present / N
``boxes_per_member``           total boxes in the cluster / N
``iou_fused_i`` (N)            IoU of member i's box with the fused box, 0 if absent
``wbf_score``                  the WBF fused score
``max_score``, ``mean_score``  over present members (0 if none)
``log_area``                   log(w·h) of the fused box, w, h clamped to >= 1e-4
``log_aspect``                 log(w / h), same clamp
``sup_iou_same``               max IoU with higher-ranked clusters of the same
                               class in the same image (0 if none)
``sup_iou_other``              same, over higher-ranked clusters of other classes
``rank_frac``                  rank in the image by fused score / clusters in image
``log1p_rank``                 log(1 + rank) (absolute rank, cf. COCO maxDets)
=============================  =================================================

Ranks are by descending fused score, ties broken by lower cluster index, and
"higher-ranked" uses that same strict order. Pairwise IoU is computed per image
on padded ``[I, L, L]`` blocks, chunked to bound memory. Pure torch, no mm*
imports; finite for C = 0 (returns ``[0, F]``).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .boxes import box_iou
from .targets import PAIR_BUDGET, group_chunks, group_positions

__all__ = ['feature_names', 'cluster_features']

_SIZE_EPS = 1e-4


def feature_names(num_members: int) -> List[str]:
    """Column names of :func:`cluster_features` (length ``3 * N + 11``)."""
    if num_members < 1:
        raise ValueError(f'num_members must be >= 1, got {num_members}')
    n = range(num_members)
    return ([f'score_{i}' for i in n] + [f'present_{i}' for i in n] +
            ['frac_present', 'boxes_per_member'] + [f'iou_fused_{i}' for i in n] +
            ['wbf_score', 'max_score', 'mean_score', 'log_area', 'log_aspect',
             'sup_iou_same', 'sup_iou_other', 'rank_frac', 'log1p_rank'])


def _suppression(boxes: Tensor, scores: Tensor, labels: Tensor, image_index: Tensor,
                 budget: int) -> List[Tensor]:
    """Per-image rank and max IoU with higher-ranked same/other-class clusters.

    Returns ``[sup_same, sup_other, rank_frac, log1p_rank]``, each ``Tensor[C]``.
    """
    c, dev, dt = boxes.shape[0], boxes.device, boxes.dtype
    sup_same = torch.zeros(c, dtype=dt, device=dev)
    sup_other = torch.zeros(c, dtype=dt, device=dev)
    if c == 0:
        return [sup_same, sup_other, sup_same.clone(), sup_same.clone()]
    _, img = torch.unique(image_index, return_inverse=True)  # [C] contiguous ids
    k = int(img.max()) + 1
    rank, cnt = group_positions(img, k, scores)  # [C], [I]
    rank_frac = rank.to(dt) / cnt[img].to(dt)  # [C]
    log_rank = torch.log1p(rank.to(dt))  # [C]
    local = torch.full((k,), -1, dtype=torch.long, device=dev)
    for grp in group_chunks(cnt, cnt, budget):
        local.fill_(-1)
        local[grp] = torch.arange(grp.numel(), device=dev)
        sel = torch.nonzero(local[img] >= 0).squeeze(1)  # clusters in this chunk
        ll = int(cnt[grp].max())
        tab = torch.full((grp.numel(), ll), -1, dtype=torch.long, device=dev)
        tab[local[img[sel]], rank[sel]] = sel  # [I', L] by rank
        valid = tab >= 0  # [I', L]
        b = boxes[tab.clamp(min=0)]  # [I', L, 4]
        lab = labels[tab.clamp(min=0)]  # [I', L]
        ious = box_iou(b, b, eps=1e-9)  # [I', L, L]
        earlier = torch.ones(ll, ll, dtype=torch.bool, device=dev).tril(-1)  # [L, L] j < i
        ok = earlier & valid.unsqueeze(1) & valid.unsqueeze(2)  # [I', L, L]
        same = lab.unsqueeze(2) == lab.unsqueeze(1)  # [I', L, L]
        zero = torch.zeros_like(ious)
        s_same = torch.where(ok & same, ious, zero).amax(-1)  # [I', L]
        s_other = torch.where(ok & ~same, ious, zero).amax(-1)
        sup_same[tab[valid]] = s_same[valid]
        sup_other[tab[valid]] = s_other[valid]
    return [sup_same, sup_other, rank_frac, log_rank]


def cluster_features(y_hat: Tensor, mask: Tensor, labels: Tensor, image_index: Tensor,
                     fused_boxes: Tensor, fused_scores: Tensor, counts: Tensor,
                     num_members: int, budget: int = PAIR_BUDGET) -> Tensor:
    """Per-cluster feature matrix (columns: :func:`feature_names`).

    Args:
        y_hat: ``Tensor[C, N, 5]`` member (x1, y1, x2, y2, score), normalised.
        mask: ``Tensor[C, N]`` bool, member present.
        labels: ``Tensor[C]`` long.
        image_index: ``Tensor[C]`` long.
        fused_boxes: ``Tensor[C, 4]`` WBF fused boxes (normalised).
        fused_scores: ``Tensor[C]`` WBF scores.
        counts: ``Tensor[C, N]`` boxes each member put in the cluster.
        num_members: N (must equal ``y_hat.shape[1]``).
        budget: max elements of one padded per-image ``[I', L, L]`` IoU block.

    Returns:
        ``Tensor[C, 3 * N + 11]`` in ``fused_boxes``' float dtype.
    """
    n = num_members
    if y_hat.dim() != 3 or y_hat.shape[1:] != (n, 5):
        raise ValueError(f'y_hat must have shape [C, {n}, 5], got {list(y_hat.shape)}')
    c = y_hat.shape[0]
    for name, t, shape in (('mask', mask, (c, n)), ('counts', counts, (c, n)),
                           ('labels', labels, (c,)), ('image_index', image_index, (c,)),
                           ('fused_boxes', fused_boxes, (c, 4)),
                           ('fused_scores', fused_scores, (c,))):
        if tuple(t.shape) != shape:
            raise ValueError(f'{name} must have shape {list(shape)}, got {list(t.shape)}')
    dt = fused_boxes.dtype if fused_boxes.is_floating_point() else torch.float32
    fb, fs = fused_boxes.to(dt), fused_scores.to(dt)
    m = mask.bool()
    mf = m.to(dt)  # [C, N]
    yh = torch.where(m.unsqueeze(-1), y_hat.to(dt), torch.zeros((), dtype=dt))  # [C, N, 5]
    scores = yh[..., 4]  # [C, N], 0 if absent
    n_present = mf.sum(1)  # [C]
    n_boxes = (counts * m).sum(1).to(dt)  # [C]
    iou_fused = box_iou(yh[..., :4], fb.unsqueeze(1).expand(c, n, 4), aligned=True,
                        eps=1e-9) * mf
    max_score = scores.amax(1)  # [C], 0 if none present
    mean_score = scores.sum(1) / n_present.clamp(min=1)  # [C]
    w = (fb[:, 2] - fb[:, 0]).clamp(min=_SIZE_EPS)  # [C]
    h = (fb[:, 3] - fb[:, 1]).clamp(min=_SIZE_EPS)  # [C]
    sup = _suppression(fb, fs, labels, image_index, budget)  # 4 x [C]
    cols = [scores, mf, (n_present / n).unsqueeze(1), (n_boxes / n).unsqueeze(1), iou_fused,
            torch.stack([fs, max_score, mean_score, torch.log(w * h), torch.log(w / h)] + sup,
                        dim=1)]
    out = torch.cat(cols, dim=1)  # [C, 3N + 11]
    assert out.shape[1] == 3 * n + 11
    return out
