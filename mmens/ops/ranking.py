"""A pairwise ranking surrogate of AP for fused detections (pure torch, batched)."""
from typing import Optional

import torch
from torch import Tensor


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
        y (Tensor): ``[C]`` 1 for matched (positive), 0 otherwise.
        labels (Tensor): ``[C]`` long class.
        keep (Tensor): ``[C]`` bool, clusters that count (e.g. not ignored).
        class_balanced (bool): weigh classes, not positives, equally.

    Returns:
        Tensor: scalar loss (0 when there is no pair).
    """
    pos = keep & (y > 0.5)  # [C]
    neg = keep & (y <= 0.5)  # [C]
    if labels.numel() == 0:
        return scores.sum() * 0.0
    num_classes = int(labels.max()) + 1
    neg_idx = torch.nonzero(neg).flatten()  # [Nn]
    order = torch.argsort(labels[neg_idx], stable=True)
    neg_sorted = neg_idx[order]  # [Nn] negatives grouped by class
    counts = torch.bincount(labels[neg_idx], minlength=num_classes)  # [K]
    starts = torch.cumsum(counts, 0) - counts  # [K]
    pos_idx = torch.nonzero(pos).flatten()  # [Np]
    cnt = counts[labels[pos_idx]]  # [Np]
    u = torch.rand(pos_idx.numel(), num_neg, generator=generator,
                   device=scores.device)  # [Np, K]
    pick = starts[labels[pos_idx]][:, None] + (u * cnt[:, None]).long().clamp_max(
        (cnt[:, None] - 1).clamp_min(0))  # [Np, num_neg]
    if neg_sorted.numel() == 0:
        return scores.sum() * 0.0
    valid = (cnt > 0).to(scores.dtype)  # [Np]
    if class_balanced:
        per_class = torch.bincount(labels[pos_idx], weights=valid, minlength=num_classes)
        valid = valid / per_class[labels[pos_idx]].clamp_min(1.0)  # [Np]
    s_neg = scores[neg_sorted[pick.clamp(0, neg_sorted.numel() - 1)]]  # [Np, num_neg]
    s_pos = scores[pos_idx][:, None]  # [Np, 1]
    loss = torch.nn.functional.softplus((s_neg - s_pos) / tau).mean(1)  # [Np]
    return (loss * valid).sum() / valid.sum().clamp_min(1e-12)
