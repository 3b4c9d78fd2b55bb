"""A pairwise ranking surrogate of AP for fused detections (pure torch, batched)."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn.functional import softplus


def positive_weights(pos: Tensor, labels: Tensor, class_balanced: bool = False) -> Tensor:
    """``[C]`` weights of the positives (0 elsewhere) summing to 1 (0 without positives).

    Args:
        pos (Tensor): ``[C]`` bool, matched clusters.
        labels (Tensor): ``[C]`` long class.
        class_balanced (bool): each class with positives weighs the same (COCO's mean over
            classes), split evenly among its positives; otherwise each positive does.
    """
    w = pos.float()
    if class_balanced and labels.numel():
        per_class = torch.bincount(labels, weights=w, minlength=int(labels.max()) + 1)
        w = w / per_class[labels].clamp_min(1.0)
    return w / w.sum().clamp_min(1e-12)


def rank_pairs(y: Tensor, labels: Tensor, keep: Tensor, num_neg: int = 64,
               generator: Optional[torch.Generator] = None,
               class_balanced: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """The (positive, sampled negative) pairs of :func:`pairwise_rank_loss` and their weights.

    Args:
        y (Tensor): ``[C]`` 1 for matched (positive), 0 otherwise.
        labels (Tensor): ``[C]`` long class.
        keep (Tensor): ``[C]`` bool, clusters that count (e.g. not ignored).
        num_neg (int): negatives sampled per positive, uniformly among its class's.
        class_balanced (bool): weigh classes, not positives, equally.

    Returns:
        ``pos [P]``, ``neg [P]`` (cluster indices, long) and ``weight [P]`` (sums to 1;
        ``P = 0`` when there is no pair), so that the loss is
        ``Σ weight · softplus((s[neg] − s[pos]) / τ)``.
    """
    device = labels.device
    empty = (torch.zeros(0, dtype=torch.long, device=device), ) * 2 + (
        torch.zeros(0, device=device), )
    pos = keep & (y > 0.5)  # [C]
    neg = keep & (y <= 0.5)  # [C]
    if labels.numel() == 0:
        return empty
    num_classes = int(labels.max()) + 1
    neg_idx = torch.nonzero(neg).flatten()  # [Nn]
    order = torch.argsort(labels[neg_idx], stable=True)
    neg_sorted = neg_idx[order]  # [Nn] negatives grouped by class
    counts = torch.bincount(labels[neg_idx], minlength=num_classes)  # [K]
    starts = torch.cumsum(counts, 0) - counts  # [K]
    pos_idx = torch.nonzero(pos).flatten()  # [Np]
    cnt = counts[labels[pos_idx]]  # [Np]
    u = torch.rand(pos_idx.numel(), num_neg, generator=generator, device=device)  # [Np, K]
    pick = starts[labels[pos_idx]][:, None] + (u * cnt[:, None]).long().clamp_max(
        (cnt[:, None] - 1).clamp_min(0))  # [Np, num_neg]
    if neg_sorted.numel() == 0:
        return empty
    # positives with a negative of their class to rank against, weighted as COCO's mean
    has_neg = torch.zeros_like(pos).index_fill_(0, pos_idx[cnt > 0], True)  # [C]
    weight = (positive_weights(has_neg, labels, class_balanced)[pos_idx] / num_neg)[
        :, None].expand(-1, num_neg)
    neg_pick = neg_sorted[pick.clamp(0, neg_sorted.numel() - 1)]  # [Np, num_neg]
    return (pos_idx[:, None].expand(-1, num_neg).reshape(-1), neg_pick.reshape(-1),
            weight.reshape(-1))


def pairwise_rank_loss(scores: Tensor, y: Tensor, labels: Tensor, keep: Tensor,
                       num_neg: int = 64, tau: float = 0.05,
                       generator: Optional[torch.Generator] = None,
                       class_balanced: bool = False) -> Tensor:
    """Mean of ``softplus((s_n - s_p) / τ)`` over positives p and sampled negatives n of
    the same class (across all images of the batch, as COCO AP ranks them).

    AP depends on how matched detections rank above unmatched ones of their class, not on
    the scores' calibration; BCE on fused scores, dominated by the many negatives, prefers
    members that score everything low. Negatives are sampled uniformly (``num_neg`` per
    positive) among the same-class negatives; positives of a class without negatives add
    nothing.

    COCO AP is the mean of per-class APs, so with ``class_balanced`` each class with
    positives weighs the same (each positive ``1 / #positives of its class``); otherwise
    each positive does, and frequent classes (``person``) dominate.

    Args:
        scores (Tensor): ``[C]`` fused scores (differentiable).
        y, labels, keep, num_neg, class_balanced: see :func:`rank_pairs`.
        tau (float): temperature of the softplus.

    Returns:
        Tensor: scalar loss (0 when there is no pair).
    """
    pos, neg, weight = rank_pairs(y, labels, keep, num_neg, generator, class_balanced)
    if pos.numel() == 0:
        return scores.sum() * 0.0
    loss = softplus((scores[neg] - scores[pos]) / tau)  # [P]
    return (loss * weight.to(scores.dtype)).sum()


def rank_loss_deltas(base: Tensor, moved: Tensor, image_index: Tensor, num_images: int,
                     pairs: Tuple[Tensor, Tensor, Tensor], tau: float = 0.05) -> Tensor:
    """Change of the ranking loss when the scores of ONE image move, for every image.

    ``out[u, b]`` is the loss with image b's clusters scored ``moved[u]`` and all others
    ``base``, minus the loss at ``base``: only the pairs that touch image b change (a pair
    within image b with both ends moved, a pair across images with one end moved).

    Args:
        base (Tensor): ``[C]`` fused scores.
        moved (Tensor): ``[U, C]`` alternative fused scores.
        image_index (Tensor): ``[C]`` image of each cluster.
        num_images (int): B.
        pairs: ``(pos [P], neg [P], weight [P])`` of :func:`rank_pairs`.
        tau (float): temperature of the softplus.

    Returns:
        Tensor[U, B]: loss changes (0 where ``moved[u]`` equals ``base`` on image b).
    """
    pos, neg, weight = pairs
    out = moved.new_zeros(moved.shape[0], num_images)
    if pos.numel() == 0:
        return out
    weight = weight.to(moved.dtype)
    loss0 = softplus((base[neg] - base[pos]) / tau)  # [P]
    ip, ineg = image_index[pos], image_index[neg]  # [P]
    same = ip == ineg  # [P]
    # a pair within one image: both ends move with it
    p, n, w, l0 = pos[same], neg[same], weight[same], loss0[same]  # [Ps]
    both = softplus((moved[:, n] - moved[:, p]) / tau)  # [U, Ps]
    out.index_add_(1, ip[same], (both - l0) * w)
    # a pair across images: the end in the moved image moves, the other stays
    p, n, w, l0 = pos[~same], neg[~same], weight[~same], loss0[~same]  # [Pc]
    pos_moved = softplus((base[n] - moved[:, p]) / tau)  # [U, Pc]
    neg_moved = softplus((moved[:, n] - base[p]) / tau)  # [U, Pc]
    out.index_add_(1, ip[~same], (pos_moved - l0) * w)
    out.index_add_(1, ineg[~same], (neg_moved - l0) * w)
    return out
