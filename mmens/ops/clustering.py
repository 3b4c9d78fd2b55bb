"""Cross-member greedy clustering with ensemble-boxes' WBF rule.

See :func:`match_boxes`. The clusters and fused boxes/scores are exactly
those of ``ensemble_boxes.weighted_boxes_fusion`` (1.0.9) run per image.
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import kernel
from .greedy import GreedyResult, greedy_cluster
from .layout import cluster_slots, concat_order, sort_desc_ties_last_first, take
from .packed import PackedDetections
from .prepare import Prepared, layout_groups, prepare_packed
from .validation import CONF_TYPES

__all__ = ['Clusters', 'match_boxes', 'wbf_clusters', 'run_wbf', 'CONF_TYPES',
           'WBF_DEFAULTS']

#: The keyword arguments of WBF (:func:`match_boxes`,
#: :func:`~mmens.ops.wbf.weighted_boxes_fusion_packed`) and their defaults.
WBF_DEFAULTS = dict(weights=None, iou_thr=0.55, skip_box_thr=0.0,
                    conf_type='avg', allows_overflow=False,
                    class_agnostic=False, image_sizes=None)



class Clusters(NamedTuple):
    """Result of :func:`match_boxes` (``C`` clusters, ``N`` members)."""
    y_hat: Tensor  # [C, N, 5] per member (x1, y1, x2, y2, score); 0 if ~mask
    mask: Tensor  # [C, N] bool, member n has >= 1 box in cluster c
    labels: Tensor  # [C] long
    image_index: Tensor  # [C] long
    fused_boxes: Tensor  # [C, 4] the WBF fused box (normalised)
    fused_scores: Tensor  # [C] WBF score after conf_type rescaling
    counts: Tensor  # [C, N] long, boxes member n put in cluster c
    box_cluster: Tensor  # [M] long, cluster of each input box, -1 filtered


def _f32(x: Tensor) -> Tensor:
    return x.float().double()


@torch.no_grad()
def wbf_clusters(prep: Prepared,
                 iou_thr: float = 0.55,
                 skip_box_thr: float = 0.0,
                 conf_type: str = 'avg',
                 allows_overflow: bool = False,
                 class_agnostic: bool = False,
                 with_clusters: bool = True) -> dict:
    """WBF clustering of prepared detections (internal building block).

    Returns a dict with, for the ``C`` clusters in output order, ``boxes``
    [C, 4], ``scores`` [C], ``labels`` [C], ``images`` [C] (float64 / long),
    and ``box_index`` [K] (packed index) and ``cluster`` [K] (its cluster) of
    the kept boxes, grouped by ``(image, label)`` and in score order inside
    a group (the order of every per-cluster sum); ``with_clusters=False``
    lets the kernel skip these two (empty then), fusion does not need them.
    """
    w = prep.weights
    if kernel.use_kernel(prep.boxes):
        return _wbf_kernel(prep, iou_thr, skip_box_thr, conf_type,
                           allows_overflow, class_agnostic, with_clusters)
    keep = prep.valid & (prep.scores >= skip_box_thr)  # [M]
    lay, idx, ws = layout_groups(prep, keep, class_agnostic,
                                 prep.scores * take(w, prep.members))
    mem = take(prep.members, idx)  # [K]
    dev = idx.device
    res = greedy_cluster(lay, take(prep.boxes, idx), ws,
                         take(w, mem), iou_thr, fused=True)
    cslot = cluster_slots(lay, res.num_clusters)  # [C]
    cl_of_slot = torch.full_like(lay.rank, -1).index_copy_(
        0, cslot, torch.arange(cslot.shape[0], device=dev))  # [K]
    present = torch.zeros(cslot.shape[0], prep.num_members, dtype=torch.bool,
                          device=dev)
    present[take(cl_of_slot, res.slot), mem] = True  # [C, N]
    score = _wbf_scores(res, cslot, present, w, conf_type, allows_overflow)
    lead = take(idx, take(res.leader, cslot))  # [C] packed index, 1st box
    images = take(prep.images, lead)  # [C]
    perm = sort_desc_ties_last_first(score, images,
                                     concat_order(lay, cslot))  # [C]
    cluster_of_slot = torch.full_like(lay.rank, -1).index_copy_(
        0, take(cslot, perm), torch.arange(perm.shape[0],
                                           device=dev))  # [K]
    return dict(boxes=take(res.ref, take(cslot, perm)),
                scores=take(score, perm),
                labels=take(prep.labels, take(lead, perm)),
                images=take(images, perm),
                cluster=take(cluster_of_slot, res.slot), box_index=idx)


def run_wbf(dets: PackedDetections,
            wbf_args: dict,
            report_image: bool = True,
            with_clusters: bool = True,
            **params) -> Tuple[Prepared, dict]:
    """Validate, prepare and cluster: the WBF of both public WBF ops.

    Args:
        dets (PackedDetections): see :func:`match_boxes`.
        wbf_args (dict): some of :data:`WBF_DEFAULTS` (the rest default).
        report_image (bool): name the image in error messages.
        with_clusters (bool): see :func:`wbf_clusters`.
        **params: further parameters to validate (``member_reduce``).

    Returns:
        tuple: the :class:`~mmens.ops.prepare.Prepared` input and the
        :func:`wbf_clusters` result.

    Raises:
        TypeError: an argument WBF does not take; see also
            :func:`~mmens.ops.validation.validate_fusion`.
    """
    unknown = sorted(set(wbf_args) - set(WBF_DEFAULTS))
    if unknown:
        raise TypeError(f'WBF got an unexpected keyword argument '
                        f'{unknown[0]!r}')
    a = dict(WBF_DEFAULTS, **wbf_args)
    weights, image_sizes = a.pop('weights'), a.pop('image_sizes')
    prep = prepare_packed(dets, weights, image_sizes, report_image, **a,
                          **params)
    return prep, wbf_clusters(prep, **a, with_clusters=with_clusters)


def _wbf_kernel(prep: Prepared, iou_thr: float, skip_box_thr: float,
                conf_type: str, allows_overflow: bool, class_agnostic: bool,
                with_clusters: bool) -> dict:
    """:func:`wbf_clusters` through the compiled CPU kernel (same output)."""
    w = prep.weights
    # the kernel weighs the scores and applies skip_box_thr itself: the
    # [M] temporaries here cost page faults on every call (ops/csrc/pool.h)
    boxes, scores, labels, images, idx, cluster = kernel._ext.wbf(
        prep.boxes.contiguous(), prep.scores.contiguous(),
        prep.labels.contiguous(), prep.members.contiguous(),
        prep.images.contiguous(), prep.valid.contiguous(), w.contiguous(),
        prep.num_images, float(iou_thr), float(skip_box_thr),
        CONF_TYPES.index(conf_type), bool(allows_overflow),
        bool(class_agnostic), float(w.sum()),
        float(w.max()) if w.numel() else 1.0, bool(with_clusters))
    return dict(boxes=boxes, scores=scores, labels=labels, images=images,
                cluster=cluster, box_index=idx)


def _wbf_scores(res: GreedyResult, cslot: Tensor, present: Tensor,
                w: Tensor, conf_type: str, allows_overflow: bool) -> Tensor:
    """ensemble-boxes' fused score with its float32 storage and rescaling.

    Args:
        res (GreedyResult): clustering state.
        cslot (Tensor[C]): slot of each cluster.
        present (Tensor[C, N]): members present in each cluster.
        w (Tensor[N]): member weights.
        conf_type (str), allows_overflow (bool): see :func:`match_boxes`.

    Returns:
        Tensor[C]: float64 scores, in ensemble-boxes' operation order.
    """
    cnt = take(res.count, cslot)  # [C]
    multi = cnt >= 2  # [C] one-box clusters keep the raw float64 row
    conf = take(res.conf, cslot)  # [C]
    smax = take(res.smax, cslot)  # [C]
    wsum = take(res.wsum, cslot)  # [C]
    if conf_type == 'max':
        s0 = torch.where(multi, _f32(smax), smax)  # [C]
    else:
        s0 = torch.where(multi, _f32(conf / cnt), conf)  # [C]
    wf = torch.where(multi, _f32(wsum), wsum)  # [C]
    cntf = cnt.double()  # [C]
    if conf_type == 'avg':
        m = cntf if allows_overflow else cntf.clamp(max=w.shape[0])
        return s0 * m / w.sum()
    if conf_type == 'max':
        return s0 / (w.max() if w.numel() else 1.0)
    # member weights of the present (absent) members, summed in member order
    # like the kernel (and NumPy for fewer than 8 members)
    want = conf_type == 'box_and_model_avg'
    msum = torch.zeros_like(s0)  # [C]
    for t in range(w.shape[0]):
        msum = msum + (present[:, t] == want).double() * w[t]
    if want:
        return s0 * cntf / wf * msum / w.sum()
    return s0 * cntf / (wf + msum)


@torch.no_grad()
def match_boxes(dets: PackedDetections,
                *,
                member_reduce: str = 'mean',
                **wbf_args) -> Clusters:
    """Cluster the boxes of several members like ensemble-boxes' WBF.

    Per image and label (per image only if ``class_agnostic``), boxes are
    sorted by weighted score ``score * weights[member]`` descending (ties:
    later packed index first, see :mod:`mmens.ops.layout`); each box joins
    the existing cluster whose *current fused box* has the highest IoU if
    that IoU is ``> iou_thr`` (ties to the lowest cluster index), otherwise
    it opens a new cluster. The fused box is the weighted-score-weighted
    mean of the cluster's boxes, computed with ensemble-boxes' float32
    accumulation. All groups of all images advance together, one box per
    group per step.

    Boxes with ``score < skip_box_thr`` or zero area (after clipping to
    ``[0, 1]``, with a warning) are not clustered (``box_cluster == -1``).

    Args:
        dets (PackedDetections): boxes ``Tensor[M, 4]`` ``(x1, y1, x2,
            y2)`` normalised to ``[0, 1]`` or, with ``image_sizes``, in
            pixels; scores, labels, members, images ``[M]``; ``N``, ``I``.
        member_reduce (str): how a member's boxes in a cluster give its
            ``y_hat`` row. ``'mean'``: raw-score-weighted mean box (plain
            mean if all its scores are 0) and mean raw score. ``'best'``:
            its highest-scoring box and that box's raw score. The fused
            box/score always use all boxes.
        **wbf_args: WBF's keyword arguments (``weights``, ``iou_thr``,
            ``skip_box_thr``, ``conf_type``, ``allows_overflow``,
            ``class_agnostic``, ``image_sizes``), as in
            :func:`~mmens.ops.wbf.weighted_boxes_fusion_packed`, with the
            defaults :data:`WBF_DEFAULTS`.

    Returns:
        Clusters: ``C`` clusters ordered by image, then fused score
        descending (the order of ensemble-boxes' output for that image).
        Float outputs have the dtype of ``boxes`` (float32 for integer).
    """
    prep, r = run_wbf(dets, wbf_args, member_reduce=member_reduce)
    n = prep.num_members
    c = r['scores'].shape[0]
    idx = r['box_index']  # [K]
    flat = r['cluster'] * n + take(prep.members, idx)  # [K]
    counts = torch.bincount(flat, minlength=c * n).view(c, n)  # [C, N]
    mask = counts > 0  # [C, N]
    y = _member_rows(take(prep.boxes, idx), take(prep.scores, idx), flat,
                     counts.view(-1), member_reduce)  # [C*N, 5]
    y_hat = (y.view(c, n, 5) * mask[..., None]).to(prep.dtype)  # [C, N, 5]
    box_cluster = torch.full_like(prep.members, -1)  # [M]
    box_cluster.index_copy_(0, r['box_index'], r['cluster'])
    return Clusters(y_hat, mask, r['labels'], r['images'],
                    r['boxes'].to(prep.dtype), r['scores'].to(prep.dtype),
                    counts, box_cluster)


def _member_rows(b: Tensor, s: Tensor, flat: Tensor, counts: Tensor,
                 member_reduce: str) -> Tensor:
    """Each member's ``(x1, y1, x2, y2, score)`` row in each cluster.

    Args:
        b (Tensor[K, 4]), s (Tensor[K]): clustered boxes and raw scores.
        flat (Tensor[K]): ``cluster * N + member`` of each box.
        counts (Tensor[C*N]): boxes of each ``(cluster, member)``.
        member_reduce (str): see :func:`match_boxes`.

    Returns:
        Tensor[C*N, 5]: rows (arbitrary where ``counts == 0``).
    """
    cn = counts.shape[0]
    if member_reduce == 'mean':
        num = b.new_zeros(cn, 4).index_add_(0, flat, s[:, None] * b)
        plain = b.new_zeros(cn, 4).index_add_(0, flat, b)  # [C*N, 4]
        den = s.new_zeros(cn).index_add_(0, flat, s)  # [C*N]
        cnt = counts.clamp(min=1).double()[:, None]  # [C*N, 1]
        box = torch.where(den[:, None] > 0,
                          num / den.clamp(min=1e-300)[:, None],
                          plain / cnt)  # [C*N, 4]
        return torch.cat((box, den[:, None] / cnt), 1)
    k = flat.shape[0]  # 'best': the first (highest-scoring) box of each
    first = torch.full((cn, ), k, dtype=torch.long, device=b.device)
    first.scatter_reduce_(0, flat, torch.arange(k, device=b.device), 'amin')
    first = first.clamp(max=max(k - 1, 0))  # [C*N]
    return torch.cat((b, s[:, None]), 1)[first] if k else b.new_zeros(cn, 5)
