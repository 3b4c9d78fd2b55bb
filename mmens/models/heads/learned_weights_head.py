"""Learned member weights for WBF: the default learned fusion."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmens.ops.targets import TargetAssignment


@MODELS.register_module()
class LearnedWeightsHead(BaseModule):
    """Learns the members' WBF weights from data instead of grid-searching them.

    On clusters matched with equal weights, the confidence of cluster c is modelled as
    ``z_c = Σ_i θ_i S_ci + b`` with ``S_ci`` member i's summed score in c (its mean score
    times its number of boxes) and ``θ = softplus(φ) > 0``, trained with BCE against
    match / no-match at IoU 0.5 (``J_cls`` on the fused confidence; clusters that only
    overlap crowd boxes are left out). WBF's confidence is a weighted mean of the same
    summed scores, so θ takes the role of hand-tuned WBF weights. At inference the matching
    and the fusion are WBF with ``w = normalize(θ̄)^power``: θ̄ averages θ within each
    ``weight_groups`` group (e.g. a detector and its flip-TTA variant), ``normalize`` makes
    the mean 1, and ``power`` < 1 shrinks the weights toward equal ones. On the embedded
    val split, 5-fold cross-validated AP chose no tying and ``power=1`` (see README).

    Args:
        num_members (int): N.
        weight_groups (Sequence[int], optional): group id per member; members of a group
            share a weight. Default: no tying.
        power (float): shrinkage exponent of the weights (1: the fitted weights).
        num_classes (int): unused, accepted for config symmetry with LearnedFusionHead.
    """

    def __init__(self, num_members: int, weight_groups: Optional[Sequence[int]] = None,
                 power: float = 1.0, num_classes: int = 80,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if weight_groups is not None and len(weight_groups) != num_members:
            raise ValueError(f'LearnedWeightsHead: weight_groups has {len(weight_groups)} '
                             f'entries for {num_members} members')
        if power <= 0:
            raise ValueError(f'LearnedWeightsHead: power must be > 0, got {power}')
        self.num_members, self.power = num_members, power
        groups = torch.as_tensor(weight_groups if weight_groups is not None
                                 else range(num_members), dtype=torch.long)
        _, groups = torch.unique(groups, return_inverse=True)
        self.register_buffer('groups', groups, persistent=False)  # [N]
        self.phi = nn.Parameter(torch.zeros(num_members))  # θ = softplus(φ)
        self.bias = nn.Parameter(torch.zeros(1))

    def theta(self) -> Tensor:
        """The fitted coefficients θ, ``Tensor[N]``."""
        return nn.functional.softplus(self.phi)

    def member_weights(self) -> Tensor:
        """WBF weights ``normalize(θ̄)^power``, ``Tensor[N]`` (mean 1 before the power)."""
        theta = self.theta().detach()
        num_groups = int(self.groups.max()) + 1 if self.groups.numel() else 0
        sums = torch.zeros(num_groups, device=theta.device).index_add_(0, self.groups, theta)
        counts = torch.bincount(self.groups, minlength=num_groups).clamp_min(1)
        tied = (sums / counts)[self.groups]  # [N]
        return (tied / tied.mean().clamp_min(1e-12)).clamp_min(1e-6) ** self.power

    theta_table = member_weights

    def matching_weights(self) -> Tensor:
        """Equal weights while training (fixed clusters), learned weights otherwise."""
        if self.training:
            return torch.ones_like(self.phi).detach()
        return self.member_weights()

    def forward(self, clusters) -> Tuple[Tensor, Tensor]:
        """WBF's fused boxes ``[C, 4]`` and scores ``[C]`` (clusters matched with the
        learned weights)."""
        return clusters.fused_boxes, clusters.fused_scores

    def loss_by_feat(self, clusters, targets: TargetAssignment) -> Dict[str, Tensor]:
        summed = clusters.y_hat[..., 4] * clusters.counts.to(clusters.y_hat.dtype)  # [C, N]
        logit = summed @ self.theta() + self.bias  # [C]
        weight = (~targets.ignored).to(logit.dtype)  # [C]
        bce = nn.functional.binary_cross_entropy_with_logits(
            logit, targets.y_cls, weight=weight, reduction='sum')
        return {'loss_cls': bce / weight.sum().clamp_min(1.0)}

    def predict_by_feat(self, clusters) -> Tuple[Tensor, Tensor]:
        return self(clusters)
