"""Learned member weights for WBF: the default learned fusion."""
from typing import Dict, Optional, Tuple

import torch
from mmens.registry import MODELS
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
    and the fusion are WBF with ``w = θ / mean(θ)``. (Tying a detector's weight to its
    flip variant's, and shrinking the weights toward equal ones, were both below this
    out of fold: docs/experiments.md.)

    Args:
        num_members (int): N.
        num_classes (int): unused, accepted for config symmetry with LearnedFusionHead.
    """

    def __init__(self, num_members: int, num_classes: int = 80,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_members = num_members
        self.phi = nn.Parameter(torch.zeros(num_members))  # θ = softplus(φ)
        self.bias = nn.Parameter(torch.zeros(1))

    def theta(self) -> Tensor:
        """The fitted coefficients θ, ``Tensor[N]``."""
        return nn.functional.softplus(self.phi)

    def member_weights(self) -> Tensor:
        """WBF weights ``θ / mean(θ)``, ``Tensor[N]``."""
        theta = self.theta().detach()
        return (theta / theta.mean().clamp_min(1e-12)).clamp_min(1e-6)

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
