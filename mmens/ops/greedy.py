"""Step-wise greedy clustering of all groups at once.

This is the hot loop shared by WBF (match against the running fused box),
NMW and hard NMS (match against the cluster's first box, "leader"). Step
``j`` takes the ``j``-th box (in score order) of every group that has one --
a prefix of the groups thanks to :class:`~mmens.ops.layout.GroupLayout` --
compares it with the at most ``j`` clusters of its group and either adds it
to the best one (IoU strictly greater than ``iou_thr``, ties to the lowest
cluster index, like ``np.argmax``) or opens a new cluster. A step costs
``O(active_groups * j)``; there is no per-box Python loop.

Cluster ``k`` of group ``g`` lives in slot ``start[g] + k`` (a group never has
more clusters than boxes), so all state is flat ``[K, F]`` (slot-major: one
``index_select``/``index_copy_`` along dim 0, the fastest gathers on CPU,
moves every field of a step). Unused slots hold a sentinel box ``(inf, inf,
-inf, -inf)`` whose IoU with any (non-empty) box is exactly 0, so no
validity mask is needed (this is why ``iou_thr`` must be ``>= 0``).
Per-cluster counts, weight sums, max scores and leaders are order-free or
index-ordered reductions computed after the loop (``index_add_`` adds in
index order, i.e. in the reference's order). The IoU is
:func:`~mmens.ops.boxes.box_iou`, whose operation order is the reference's.

Fused mode reproduces ensemble-boxes' arithmetic bit for bit in float64: its
``get_weighted_box`` accumulates ``score * box`` in a float32 array (each
addition done in float64 then rounded), divides by the float64 score sum and
stores the result in float32, while a single-box cluster keeps the raw
float64 box. The reference box used for matching is therefore the raw box
for one-box clusters and the float32-rounded fused box otherwise.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from .boxes import box_iou
from .layout import GroupLayout

__all__ = ['GreedyResult', 'greedy_cluster']


class GreedyResult(NamedTuple):
    """Per-slot state after clustering (slots indexed like layout positions).

    Attributes:
        slot (Tensor[K]): cluster slot of the box at each layout position.
        num_clusters (Tensor[G]): number of clusters of each group.
        ref (Tensor[K, 4]): reference box of each slot: the fused box as
            ensemble-boxes holds it (fused mode) or the leader box.
        leader (Tensor[K]): layout position of the box that opened the slot.
        conf (Tensor[K]): sum of the weighted scores (fused mode).
        wsum (Tensor[K]): sum of the member weights (fused mode).
        count (Tensor[K]): number of boxes (fused mode).
        smax (Tensor[K]): max weighted score (fused mode).
    """
    slot: Tensor
    num_clusters: Tensor
    ref: Tensor
    leader: Tensor
    conf: Tensor
    wsum: Tensor
    count: Tensor
    smax: Tensor


# a step syncs to shrink the candidate width to the true max cluster count
# only when the saved work (active groups x steps) is worth a host sync
_SYNC_WORK = 8192


@torch.no_grad()
def greedy_cluster(layout: GroupLayout,
                   boxes: Tensor,
                   wscores: Tensor,
                   bweights: Tensor,
                   iou_thr: float,
                   fused: bool = True) -> GreedyResult:
    """Cluster every group of ``layout`` greedily, one step for all groups.

    Args:
        layout (GroupLayout): grouping of the ``K`` boxes.
        boxes (Tensor[K, 4]): float64 boxes in layout order.
        wscores (Tensor[K]): float64 weighted scores in layout order
            (non-increasing inside each group).
        bweights (Tensor[K]): float64 member weight of each box.
        iou_thr (float): a box joins a cluster iff IoU > ``iou_thr`` (>= 0).
        fused (bool): match against the running fused box (WBF) instead of
            the cluster's first box (NMW, NMS).

    Returns:
        GreedyResult: cluster assignment and per-slot state.
    """
    if iou_thr < 0:
        raise ValueError(f'iou_thr must be >= 0, got {iou_thr}')
    k_all, dev = boxes.shape[0], boxes.device
    start = layout.start
    cols = [boxes]  # box (4)
    if fused:  # score * box (4), score (1): added to sum (4), conf (1)
        cols += [wscores[:, None] * boxes, wscores[:, None]]
    data = torch.cat(cols, 1)  # [K, F]
    geo = torch.empty(k_all, 4, dtype=boxes.dtype, device=dev)  # ref box
    geo[:, :2], geo[:, 2:] = float('inf'), float('-inf')  # sentinel box
    geo.index_copy_(0, start, data.index_select(0, start)[:, :4])  # step 0:
    if fused:  # every group opens cluster 0 with its first box
        acc = torch.zeros(k_all, 5, dtype=boxes.dtype, device=dev)
        first = data.index_select(0, start)[:, 4:]  # [G, 5]
        first[:, :4] = first[:, :4].float()
        acc.index_copy_(0, start, first)  # [K, 5] float32 sums (4), conf
        zeros = bool((wscores == 0).any())
    kk = torch.zeros(k_all, dtype=torch.long, device=dev)  # [K] cluster idx
    ncl = torch.ones_like(start)  # [G] clusters per group
    steps = torch.arange(len(layout.active), device=dev)  # [L]
    for j in range(1, len(layout.active)):
        a = layout.active[j]
        sa = start[:a]  # [A]
        width = int(ncl[:a].max()) if a * j > _SYNC_WORK else j
        bi = sa + j  # [A] layout position of the new box
        nb = data.index_select(0, bi)  # [A, F]
        ix = (sa[:, None] + steps[:width]).view(-1)  # [A * W] slots
        cand = geo.index_select(0, ix).view(a, width, 4)  # [A, W, 4]
        iou = box_iou(cand, nb[:, None, :4], aligned=True)  # [A, W]
        best_iou, best = iou.max(1)  # [A], first max like np.argmax
        join = best_iou > iou_thr  # [A]
        k = torch.where(join, best, ncl[:a])  # [A]
        ncl[:a] += ~join
        kk.index_copy_(0, bi, k)
        sl = sa + k  # [A] slot of the box's cluster
        if not fused:  # new clusters get the box as leader
            geo.index_copy_(
                0, sl,
                torch.where(join[:, None], geo.index_select(0, sl), nb))
            continue
        new = acc.index_select(0, sl) + nb[:, 4:]  # [A, 5] sum, conf
        new[:, :4] = new[:, :4].float()  # ensemble-boxes' float32 sums
        fb = (new[:, :4] / new[:, 4:]).float()  # [A, 4] stored as float32
        ref = torch.where(join[:, None], fb, nb[:, :4])  # [A, 4]
        if zeros:  # all-zero-score clusters keep their first box (ref: NaN)
            keep = (join & (new[:, 4] == 0))[:, None]
            ref = torch.where(keep, geo.index_select(0, sl), ref)
        geo.index_copy_(0, sl, ref)
        acc.index_copy_(0, sl, new)
    slot = torch.repeat_interleave(start, layout.size) + kk  # [K]
    pos = torch.arange(k_all, device=dev)  # [K]
    leader = torch.full_like(kk, k_all).scatter_reduce_(0, slot, pos, 'amin')
    count = torch.bincount(slot, minlength=k_all)  # [K]
    wsum = torch.zeros_like(wscores).index_add_(0, slot, bweights)  # [K]
    smax = torch.zeros_like(wscores).scatter_reduce_(0, slot, wscores,
                                                     'amax')  # [K]
    conf = acc[:, 4] if fused else wsum
    return GreedyResult(slot, ncl, geo, leader, conf, wsum, count,
                        smax)
