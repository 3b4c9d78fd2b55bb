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
more clusters than boxes), so all state is flat ``[F, K]`` (coordinate-major:
one ``gather``/``index_copy_`` moves every field of a step). Unused slots
hold a sentinel box ``(inf, inf, -inf, -inf)`` of infinite area whose IoU
with any box is exactly 0, so no validity mask is needed (this is why
``iou_thr`` must be ``>= 0``). Per-cluster counts, weight sums, max scores
and leaders are order-free or index-ordered reductions computed after the
loop (``index_add_`` adds in index order, i.e. in the reference's order).

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

from .boxes import box_iou_aligned
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
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [K]
    rows = [boxes.t(), area[None]]  # box (4), area (1)
    if fused:  # score * box (4), score (1): added to sum (4), conf (1)
        rows += [(wscores[:, None] * boxes).t(), wscores[None]]
    data = torch.cat(rows)  # [F, K]
    state = torch.zeros_like(data)  # [F, K] ref (4), area (1), sum, conf
    state[:2], state[2:5] = float('inf'), float('-inf')
    state[4] = float('inf')
    first = data.index_select(1, start)  # [F, G] step 0: every group opens
    if fused:  # cluster 0 with its first box
        first[5:9] = first[5:9].float()
    state.index_copy_(1, start, first)
    kk = torch.zeros(k_all, dtype=torch.long, device=dev)  # [K] cluster idx
    ncl = torch.ones_like(start)  # [G] clusters per group
    steps = torch.arange(len(layout.active), device=dev)  # [L]
    for j in range(1, len(layout.active)):
        a = layout.active[j]
        sa = start[:a]  # [A]
        width = int(ncl[:a].max()) if a * j > _SYNC_WORK else j
        bi = sa + j  # [A] layout position of the new box
        nb = data.index_select(1, bi)  # [F, A]
        ix = (sa[:, None] + steps[:width]).view(-1)  # [A * W] slots
        cand = state[:5].gather(1, ix.expand(5, -1)).view(5, a, width)
        lo = torch.maximum(cand[:2], nb[:2, :, None])  # [2, A, W]
        hi = torch.minimum(cand[2:4], nb[2:4, :, None])  # [2, A, W]
        wh = (hi - lo).clamp_(min=0)  # [2, A, W]
        inter = wh[0] * wh[1]  # [A, W]
        iou = inter / (cand[4] + nb[4, :, None] - inter)  # [A, W]
        best_iou, best = iou.max(1)  # [A], first max like np.argmax
        join = best_iou > iou_thr  # [A]
        k = torch.where(join, best, ncl[:a])  # [A]
        ncl[:a] += ~join
        kk.index_copy_(0, bi, k)
        sl = sa + k  # [A] slot of the box's cluster
        if not fused:  # new clusters get the box as leader
            old = state.index_select(1, sl)  # [5, A]
            state.index_copy_(1, sl, torch.where(join, old, nb))
            continue
        old = state.index_select(1, sl)  # [10, A]
        acc = old[5:] + nb[5:]  # [5, A] sum (float32-rounded below), conf
        acc[:4] = acc[:4].float()
        fb = (acc[:4] / acc[4]).float()  # [4, A] fused box as float32
        # all-zero-score clusters keep their first box (reference: NaN)
        ref = torch.where(join & (acc[4] > 0), fb,
                          torch.where(join, old[:4], nb[:4]))  # [4, A]
        ref_area = (ref[2] - ref[0]) * (ref[3] - ref[1])  # [A]
        state.index_copy_(1, sl, torch.cat([ref, ref_area[None], acc]))
    slot = torch.repeat_interleave(start, layout.size) + kk  # [K]
    pos = torch.arange(k_all, device=dev)  # [K]
    leader = torch.full_like(kk, k_all).scatter_reduce_(0, slot, pos, 'amin')
    count = torch.bincount(slot, minlength=k_all)  # [K]
    wsum = torch.zeros_like(wscores).index_add_(0, slot, bweights)  # [K]
    smax = torch.zeros_like(wscores).scatter_reduce_(0, slot, wscores,
                                                     'amax')  # [K]
    conf = state[9] if fused else wsum
    return GreedyResult(slot, ncl, state[:4].t(), leader, conf, wsum, count,
                        smax)
