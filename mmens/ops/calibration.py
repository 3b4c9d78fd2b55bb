"""Per-member score calibration: a Platt map on each member's scores.

Members score on different scales (a member whose scores never pass 0.3 can be as precise
as one at 0.9), and WBF averages raw scores across members and ranks the fused boxes of
all images by them. A monotone map per member, ``s' = sigmoid(a_i logit(s) + b_i)``,
makes the scores comparable before matching and fusion without changing any member's own
ranking. ``a_i = 1, b_i = 0`` is the identity (up to the clamp of ``s`` to ``[eps, 1 - eps]``,
which keeps ``logit`` finite for scores of exactly 0 or 1).
"""
import torch
from torch import Tensor

__all__ = ['platt_scores', 'PLATT_EPS']

#: scores are clamped to ``[PLATT_EPS, 1 - PLATT_EPS]`` before ``logit``
PLATT_EPS = 1e-6


def platt_scores(scores: Tensor, members: Tensor, slope: Tensor, shift: Tensor) -> Tensor:
    """``sigmoid(slope[m] * logit(s) + shift[m])`` of each score ``s`` of member ``m``.

    Args:
        scores (Tensor[M]): scores in ``[0, 1]`` (any float dtype; the output has it).
        members (Tensor[M]): member of each score, ``0..N-1``.
        slope (Tensor[N]): ``a_i > 0`` (a positive slope keeps each member's order).
        shift (Tensor[N]): ``b_i``.

    Returns:
        Tensor[M]: calibrated scores in ``(0, 1)``; differentiable in ``slope``, ``shift``.
    """
    if scores.numel() == 0:
        return scores.clone()
    logit = torch.logit(scores.clamp(PLATT_EPS, 1 - PLATT_EPS))  # [M]
    z = slope.to(scores.dtype)[members] * logit + shift.to(scores.dtype)[members]  # [M]
    return torch.sigmoid(z)
