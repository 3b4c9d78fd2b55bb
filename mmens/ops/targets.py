"""Training targets for learned fusion: match fused clusters to ground truth.

docs/theory.md §3: each cluster's fused box is matched to a ground-truth box of the
same class in the same image, IoU >= ``iou_thr``, greedily by fused score, the
way ``pycocotools`` COCOeval matches detections:

* clusters are visited in descending fused score (ties: lower index first);
* a cluster takes the still-unmatched, non-ignored GT with the highest IoU
  (ties: lower GT index), if that IoU >= ``iou_thr``; a GT is matched at most once;
* ignored GT (COCO ``iscrowd``) never give positives. A cluster left unmatched
  whose IoF (intersection / cluster-box area, COCO's crowd overlap) with an
  ignored GT is >= ``iou_thr`` is flagged ``ignored`` (COCOeval neither counts
  it as TP nor FP); its ``y_cls`` is still 0, callers may drop it from the loss.

Work is vectorised over images and classes: clusters and GT are grouped by
(image, class) and padded to ``[K, Lc]`` / ``[K, Lg]`` tables; the only Python
loop is over the rank step ``j < Lc`` (all groups advance together) and over
memory-bounded chunks of groups. Pure torch, no mm* imports.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .boxes import box_iou

__all__ = ['TargetAssignment', 'assign_targets']

#: Max elements of one padded pairwise tensor (chunks of groups stay below).
PAIR_BUDGET = 1 << 22


def group_positions(group: Tensor, num_groups: int, key: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor]:
    """Position of each element inside its group, ordered by descending ``key``.

    Args:
        group: ``Tensor[M]`` long group ids in ``[0, num_groups)``.
        key: ``Tensor[M]`` sort key (descending, stable), or None for index order.

    Returns:
        ``pos`` ``Tensor[M]`` long (0 = first in its group) and
        ``counts`` ``Tensor[num_groups]`` long.
    """
    m = group.numel()
    idx = torch.arange(m, device=group.device)
    order = idx if key is None else torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then key
    counts = torch.bincount(group, minlength=num_groups)  # [K]
    starts = torch.cumsum(counts, 0) - counts  # [K]
    pos = torch.empty_like(group)
    pos[order] = idx - starts[group[order]]
    return pos, counts


def group_chunks(len_a: Tensor, len_b: Tensor, budget: int = PAIR_BUDGET) -> List[Tensor]:
    """Split groups into chunks whose padded ``n * max(len_a) * max(len_b)`` fits.

    Groups are sorted by ``len_a * len_b`` first so that padding waste is small.
    A single group over budget still forms its own chunk.

    Args:
        len_a, len_b: ``Tensor[K]`` long sizes of each group's two sides.

    Returns:
        List of ``Tensor[k]`` long group ids (covering all K groups once).
    """
    k = len_a.numel()
    order = torch.argsort(len_a * len_b, stable=True)  # [K]
    la, lb = len_a[order], len_b[order]
    chunks, start = [], 0
    while start < k:
        ma = torch.cummax(la[start:], 0).values  # [K - start]
        mb = torch.cummax(lb[start:], 0).values
        n = torch.arange(1, k - start + 1, device=la.device)
        fits = int((n * ma * mb <= budget).sum())  # monotone, so a prefix fits
        end = start + max(fits, 1)
        chunks.append(order[start:end])
        start = end
    return chunks


def _greedy_match(ious_pos: Tensor, mx: Tensor, cvalid: Tensor, iou_thr: float
                  ) -> Tuple[Tensor, Tensor]:
    """COCO greedy matching inside padded groups, advancing all groups one rank at a time.

    Only clusters that can match (best IoU >= thr) take part, and at rank step j only the
    groups with more than j such clusters are touched (groups sorted by that count), so
    the loop costs O(sum over groups of candidates x GT) rather than O(steps x groups).

    Args:
        ious_pos: ``Tensor[k, Lc, Lg]`` IoU with matchable GT (-1 elsewhere), clusters in
            descending score order. mx: ``Tensor[k, Lc]`` best IoU. cvalid: ``Tensor[k, Lc]``.

    Returns:
        ``m_loc`` ``Tensor[k, Lc]`` local GT slot (-1 unmatched), ``m_iou`` ``Tensor[k, Lc]``.
    """
    k, lc, lg = ious_pos.shape
    dev = ious_pos.device
    m_loc = torch.full((k, lc), -1, dtype=torch.long, device=dev)
    m_iou = torch.zeros_like(mx)
    elig = cvalid & (mx >= iou_thr)  # [k, Lc]
    ne = elig.sum(1)  # [k]
    if k == 0 or not bool(elig.any()):
        return m_loc, m_iou
    order = torch.argsort(ne, descending=True, stable=True)  # groups, most candidates first
    inv = torch.empty_like(order)
    inv[order] = torch.arange(k, device=dev)
    erank = torch.cumsum(elig.long(), 1) - 1  # [k, Lc] rank among candidates
    r_idx, c_idx = torch.nonzero(elig, as_tuple=True)
    counts = ne[order].tolist()  # one host sync per chunk
    le = counts[0]
    e_col = torch.full((k, le), -1, dtype=torch.long, device=dev)  # sorted groups
    e_col[inv[r_idx], erank[r_idx, c_idx]] = c_idx
    ious_e = ious_pos[order[:, None], e_col.clamp(min=0)]  # [k, Le, Lg]
    taken = torch.zeros(k, lg, dtype=torch.bool, device=dev)
    e_loc = torch.full((k, le), -1, dtype=torch.long, device=dev)
    e_iou = torch.zeros(k, le, dtype=mx.dtype, device=dev)
    active = torch.tensor(counts, device='cpu')
    for j in range(le):
        a = int((active > j).sum())  # groups with > j candidates: a prefix
        cand = ious_e[:a, j].masked_fill(taken[:a], -1.)  # [a, Lg]
        best, arg = cand.max(-1)  # [a], first max on ties
        hit = best >= iou_thr  # [a]
        rows = torch.nonzero(hit).squeeze(1)
        taken[rows, arg[rows]] = True
        e_loc[:a, j] = torch.where(hit, arg, e_loc[:a, j])
        e_iou[:a, j] = torch.where(hit, best, e_iou[:a, j])
    ok = e_col >= 0  # [k, Le]
    g_rows = order[:, None].expand_as(e_col)[ok]
    m_loc[g_rows, e_col[ok]] = e_loc[ok]
    m_iou[g_rows, e_col[ok]] = e_iou[ok]
    return m_loc, m_iou


class TargetAssignment(NamedTuple):
    """Per-cluster targets (all ``[C]`` except ``y_box``)."""
    y_cls: Tensor  # [C] float, 1. when matched else 0.
    y_box: Tensor  # [C, 4] matched GT box (0 when unmatched), same frame as gt_boxes
    matched_gt: Tensor  # [C] long GT index, -1 when unmatched
    iou: Tensor  # [C] IoU with the matched GT, 0 when unmatched
    max_iou: Tensor  # [C] max IoU with any non-ignored same-class same-image GT
    ignored: Tensor  # [C] bool, unmatched but IoF >= iou_thr with an ignored GT


def _check(name: str, t: Tensor, shape: Tuple[Optional[int], ...]) -> None:
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = 'x'.join('*' if s is None else str(s) for s in shape)
        raise ValueError(f'{name} must have shape [{want}], got {list(t.shape)}')


def _padded_tables(grp: Tensor, local: Tensor, cl_grp: Tensor, gt_grp: Tensor,
                   cl_pos: Tensor, gt_pos: Tensor, lc: int, lg: int) -> Tuple[Tensor, Tensor]:
    """The clusters and GT of the groups ``grp`` as padded index tables.

    Args:
        grp: ``Tensor[k]`` global ids of the chunk's groups; ``local`` maps them to
            ``0..k-1`` (-1 for the other groups).
        cl_grp, gt_grp: ``Tensor[C]`` / ``Tensor[G]`` group of each cluster / GT.
        cl_pos, gt_pos: their rank inside the group. lc, lg: widest group of the chunk.

    Returns:
        ``Tensor[k, Lc]`` cluster index by score rank and ``Tensor[k, Lg]`` GT index
        (-1 padding).
    """
    dev = grp.device
    cl_tab = torch.full((grp.numel(), lc), -1, dtype=torch.long, device=dev)
    gt_tab = torch.full((grp.numel(), lg), -1, dtype=torch.long, device=dev)
    csel = torch.nonzero(local[cl_grp] >= 0).squeeze(1)
    gsel = torch.nonzero(local[gt_grp] >= 0).squeeze(1)
    cl_tab[local[cl_grp[csel]], cl_pos[csel]] = csel  # [k, Lc] by rank
    gt_tab[local[gt_grp[gsel]], gt_pos[gsel]] = gsel  # [k, Lg]
    return cl_tab, gt_tab


def _match_chunk(cl_tab: Tensor, gt_tab: Tensor, fused_boxes: Tensor, gt_boxes: Tensor,
                 gt_ignore: Tensor, iou_thr: float, out: TargetAssignment) -> None:
    """Match the clusters of a chunk of groups (:func:`_padded_tables`) to their GT, and
    write ``matched_gt``, ``iou``, ``max_iou`` and ``ignored`` of ``out`` in place."""
    cvalid, gvalid = cl_tab >= 0, gt_tab >= 0
    cb = fused_boxes[cl_tab.clamp(min=0)]  # [k, Lc, 4]
    gb = gt_boxes[gt_tab.clamp(min=0)]  # [k, Lg, 4]
    ign = gt_ignore[gt_tab.clamp(min=0)] & gvalid  # [k, Lg]
    pos_gt = gvalid & ~ign  # [k, Lg]
    ious = box_iou(cb, gb, eps=1e-9)  # [k, Lc, Lg]
    ious_pos = torch.where(pos_gt.unsqueeze(1), ious, torch.full_like(ious, -1.))
    mx = ious_pos.max(-1).values.clamp(min=0)  # [k, Lc]
    out.max_iou[cl_tab[cvalid]] = mx[cvalid]
    m_loc, m_iou = _greedy_match(ious_pos, mx, cvalid, iou_thr)  # [k, Lc] x2
    rows = torch.arange(cl_tab.shape[0], device=cl_tab.device)
    hit = m_loc >= 0  # [k, Lc]
    out.matched_gt[cl_tab[hit]] = gt_tab[rows[:, None].expand_as(m_loc)[hit], m_loc[hit]]
    out.iou[cl_tab[hit]] = m_iou[hit]
    if bool(ign.any()):
        iof = box_iou(cb, gb, mode='iof', eps=1e-9)  # [k, Lc, Lg]
        crowd = ((iof >= iou_thr) & ign.unsqueeze(1)).any(-1)  # [k, Lc]
        out.ignored[cl_tab[crowd & cvalid & ~hit]] = True


def _match_groups(fused_boxes: Tensor, fused_scores: Tensor, labels: Tensor,
                  image_index: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                  gt_image_index: Tensor, gt_ignore: Tensor, iou_thr: float, budget: int,
                  out: TargetAssignment) -> None:
    """Group clusters and GT by (image, class), then match chunk by chunk of groups
    (padded tensors below ``budget`` elements), writing into ``out``."""
    c, dev = labels.shape[0], labels.device
    n_cls = int(torch.cat([labels, gt_labels]).max()) + 1
    key = torch.cat([image_index * n_cls + labels, gt_image_index * n_cls + gt_labels])
    _, inv = torch.unique(key, return_inverse=True)  # [C + G]
    cl_grp, gt_grp = inv[:c], inv[c:]
    k = int(inv.max()) + 1
    cl_pos, cl_cnt = group_positions(cl_grp, k, fused_scores)  # rank in group
    gt_pos, gt_cnt = group_positions(gt_grp, k)
    grp_ids = torch.nonzero((cl_cnt > 0) & (gt_cnt > 0)).squeeze(1)  # both sides present
    local = torch.full((k,), -1, dtype=torch.long, device=dev)
    for chunk in group_chunks(cl_cnt[grp_ids], gt_cnt[grp_ids], budget):
        grp = grp_ids[chunk]  # [k'] global group ids
        local.fill_(-1)
        local[grp] = torch.arange(grp.numel(), device=dev)
        cl_tab, gt_tab = _padded_tables(grp, local, cl_grp, gt_grp, cl_pos, gt_pos,
                                        int(cl_cnt[grp].max()), int(gt_cnt[grp].max()))
        _match_chunk(cl_tab, gt_tab, fused_boxes, gt_boxes, gt_ignore, iou_thr, out)


@torch.no_grad()
def assign_targets(fused_boxes: Tensor, fused_scores: Tensor, labels: Tensor,
                   image_index: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                   gt_image_index: Tensor, iou_thr: float = 0.5,
                   gt_ignore: Optional[Tensor] = None,
                   budget: int = PAIR_BUDGET) -> TargetAssignment:
    """Greedy COCO-style matching of fused clusters to ground truth (theory §3).

    Args:
        fused_boxes: ``Tensor[C, 4]`` x1y1x2y2 fused boxes.
        fused_scores: ``Tensor[C]`` fused scores (matching order).
        labels: ``Tensor[C]`` long class of each cluster.
        image_index: ``Tensor[C]`` long image of each cluster.
        gt_boxes: ``Tensor[G, 4]`` in the same coordinate frame as ``fused_boxes``.
        gt_labels: ``Tensor[G]`` long.
        gt_image_index: ``Tensor[G]`` long.
        iou_thr: a match needs IoU >= iou_thr.
        gt_ignore: ``Tensor[G]`` bool (COCO crowd) or None.
        budget: max elements of one padded ``[k, Lc, Lg]`` IoU tensor.

    Returns:
        :class:`TargetAssignment`.
    """
    _check('labels', labels, (None,))
    _check('gt_labels', gt_labels, (None,))
    c, g = labels.shape[0], gt_labels.shape[0]
    _check('fused_boxes', fused_boxes, (c, 4))
    _check('fused_scores', fused_scores, (c,))
    _check('image_index', image_index, (c,))
    _check('gt_boxes', gt_boxes, (g, 4))
    _check('gt_image_index', gt_image_index, (g,))
    dev, dt = fused_boxes.device, fused_boxes.dtype
    if gt_ignore is None:
        gt_ignore = torch.zeros(g, dtype=torch.bool, device=dev)
    _check('gt_ignore', gt_ignore, (g,))
    gt_boxes = gt_boxes.to(dt)
    out = TargetAssignment(
        y_cls=torch.zeros(c, dtype=dt, device=dev),
        y_box=torch.zeros(c, 4, dtype=dt, device=dev),
        matched_gt=torch.full((c,), -1, dtype=torch.long, device=dev),
        iou=torch.zeros(c, dtype=dt, device=dev), max_iou=torch.zeros(c, dtype=dt, device=dev),
        ignored=torch.zeros(c, dtype=torch.bool, device=dev))
    if c > 0 and g > 0:
        _match_groups(fused_boxes, fused_scores, labels, image_index, gt_boxes, gt_labels,
                      gt_image_index, gt_ignore.bool(), iou_thr, budget, out)
    matched = out.matched_gt >= 0  # [C]
    out.y_cls[matched] = 1.0
    out.y_box[matched] = gt_boxes[out.matched_gt[matched]]
    return out
