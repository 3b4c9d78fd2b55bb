"""Group layout used by every batched fusion op.

Boxes are grouped by a key (``(image, label)``, or ``image`` when class
agnostic), ordered inside each group, and the groups are laid out in
decreasing size so that "the groups that still have a box at step ``j``" is
always a *prefix* ``[:active[j]]`` of the groups. A greedy step then reads
``start[:A] + j`` for all groups at once.

Tie rule. ensemble-boxes orders with ``argsort()[::-1]`` on the scores. For
equal scores that is "the later box first" whenever the sort is stable, which
is the case for numba's ``argsort`` (used by ``nms``) on arrays of at most 15
elements and for NumPy's on at most 3 elements when NumPy dispatches to the
AVX-512/AVX2 x86-simd-sort kernels (NumPy >= 1.25 on such CPUs; without SIMD,
NumPy's introsort is stable up to 16 elements). For longer arrays both are
unstable and their tie order depends on the sorting network, so no simple
rule reproduces it; we always use "later box (higher packed index) first".
"""
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    'GroupLayout', 'build_layout', 'sort_desc_ties_last_first',
    'argsort_stable', 'take', 'cluster_slots', 'concat_order'
]

_I64_MAX = torch.iinfo(torch.int64).max


def take(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0 via ``index_select`` (several times faster
    than advanced indexing on CPU).

    Args:
        x (Tensor[K, ...]): source.
        index (Tensor[R]): long indices.

    Returns:
        Tensor[R, ...]: gathered rows.
    """
    return x.index_select(0, index)


def argsort_stable(x: Tensor, descending: bool = False) -> Tensor:
    """Stable argsort, via an order-preserving int64 key for floats.

    torch's CPU sort is several times faster on int64 ascending (radix
    sort) than on floats or descending, so floats are mapped to the int64
    whose order is the float order (IEEE bit trick, ``-0.0 == 0.0``) and
    descending order uses the bitwise complement of the key.

    Args:
        x (Tensor[K]): values (no NaN).
        descending (bool): sort descending; equal values keep their order.

    Returns:
        Tensor[K]: permutation.
    """
    if x.is_floating_point():
        k = (x.double() + 0.0).view(torch.int64)  # [K] sign-magnitude bits
        k = torch.where(k < 0, k ^ _I64_MAX, k)  # [K] monotonic in x
    else:
        k = x.long()
    if descending:
        k = ~k
    return torch.sort(k, stable=True)[1]


class GroupLayout(NamedTuple):
    """Boxes grouped and ordered for the step-wise greedy loops.

    Attributes:
        order (Tensor[K]): index into the caller's (kept) boxes of the box at
            each layout position.
        start (Tensor[G]): first layout position of each group; groups are in
            decreasing size (stable w.r.t. key order).
        size (Tensor[G]): number of boxes of each group.
        key (Tensor[G]): group key.
        group (Tensor[K]): group of each layout position.
        rank (Tensor[K]): position of each box inside its group.
        active (list[int]): ``active[j]`` = number of groups with more than
            ``j`` boxes, for ``j < max(size)``.
    """
    order: Tensor
    start: Tensor
    size: Tensor
    key: Tensor
    group: Tensor
    rank: Tensor
    active: List[int]


def sort_desc_ties_last_first(values: Tensor,
                              key: Optional[Tensor] = None,
                              tie: Optional[Tensor] = None) -> Tensor:
    """Permutation sorting by ``key`` ascending, then ``values`` descending,
    then ``tie`` descending (default: position, i.e. later entries first).

    Args:
        values (Tensor[K]): primary value, sorted descending.
        key (Tensor[K], optional): outer key, sorted ascending.
        tie (Tensor[K], optional): tie breaker, larger first.

    Returns:
        Tensor[K]: permutation.
    """
    k = values.shape[0]
    if tie is None:
        p = torch.arange(k - 1, -1, -1, device=values.device)  # [K]
    else:
        p = argsort_stable(tie, descending=True)  # [K]
    p = take(p, argsort_stable(take(values, p), descending=True))
    if key is not None:
        p = take(p, argsort_stable(take(key, p)))
    return p


def build_layout(key: Tensor, values: Optional[Tensor] = None) -> GroupLayout:
    """Group boxes by ``key`` and lay the groups out by decreasing size.

    Args:
        key (Tensor[K]): group key of each box (long).
        values (Tensor[K], optional): sort boxes inside a group by this,
            descending, ties later-index first (see module doc). ``None``
            keeps the input order inside each group (soft-NMS).

    Returns:
        GroupLayout: see the class.
    """
    dev = key.device
    k = key.shape[0]
    if k == 0:
        e = torch.zeros(0, dtype=torch.long, device=dev)
        return GroupLayout(e, e, e, e, e, e, [])
    if values is None:
        p = argsort_stable(key)  # [K]
    else:
        p = sort_desc_ties_last_first(values, key)  # [K]
    gkey, counts = torch.unique_consecutive(take(key, p), return_counts=True)
    g = gkey.shape[0]
    gid = torch.repeat_interleave(torch.arange(g, device=dev), counts)  # [K]
    kstart = torch.cumsum(counts, 0) - counts  # [G]
    rank = torch.arange(k, device=dev) - take(kstart, gid)  # [K]
    gperm = argsort_stable(counts, descending=True)  # [G]
    size = take(counts, gperm)  # [G]
    gpos = torch.empty_like(gperm).index_copy_(
        0, gperm, torch.arange(g, device=dev))  # [G] group -> size rank
    start = torch.cumsum(size, 0) - size  # [G]
    ggid = take(gpos, gid)  # [K] size-ordered group of each box
    pos = take(start, ggid) + rank  # [K]
    order = torch.empty_like(p).index_copy_(0, pos, p)  # [K]
    group = torch.empty_like(gid).index_copy_(0, pos, ggid)  # [K]
    rk = torch.empty_like(rank).index_copy_(0, pos, rank)  # [K]
    hist = torch.bincount(size)  # [L + 1]
    active = torch.flip(torch.cumsum(torch.flip(hist, (0, )), 0), (0, ))[1:]
    return GroupLayout(order, start, size, take(gkey, gperm), group, rk,
                       active.tolist())


def cluster_slots(layout: GroupLayout, num_clusters: Tensor) -> Tensor:
    """Slots in use after greedy clustering (cluster ``k`` of group ``g``
    lives at layout position ``start[g] + k``).

    Args:
        layout (GroupLayout): the layout clustered.
        num_clusters (Tensor[G]): clusters of each group.

    Returns:
        Tensor[C]: slot of every cluster, by group then creation order.
    """
    used = layout.rank < take(num_clusters, layout.group)  # [K]
    return torch.nonzero(used)[:, 0]


def concat_order(layout: GroupLayout, slots: Tensor) -> Tensor:
    """Position of each cluster in ensemble-boxes' per-image concatenation.

    ensemble-boxes builds a dict of labels in order of first appearance
    (member-major input order, after filtering), clusters each label in
    creation order and concatenates, before ``argsort()[::-1]`` by score.
    Used as the tie key (larger first) of the final sort.

    Args:
        layout (GroupLayout): layout built from boxes in input order.
        slots (Tensor[C]): cluster slots (see :func:`cluster_slots`).

    Returns:
        Tensor[C]: long key, increasing with the concatenation position
        (comparable within one image).
    """
    k = layout.order.shape[0]
    first = torch.full_like(layout.start, k)  # [G] first box of each group
    first.scatter_reduce_(0, layout.group, layout.order, 'amin')
    return take(first, take(layout.group, slots)) * (k + 1) + take(
        layout.rank, slots)  # [C]
