"""Learned member weights and score calibration for WBF: the default learned fusion."""
from typing import Dict, Optional, Tuple

import torch
from mmens.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmens.ops.calibration import platt_scores
from mmens.ops.targets import TargetAssignment

CALIBRATIONS = ('none', 'platt')


@MODELS.register_module()
class LearnedWeightsHead(BaseModule):
    """Learns the members' WBF weights, and optionally a score calibration per member,
    from data instead of grid-searching weights.

    On clusters matched with equal weights, the confidence of cluster c is modelled as
    ``z_c = Σ_i θ_i S_ci + b`` with ``S_ci`` member i's summed (calibrated) score in c
    (``counts_ci · g_i(mean score)``: exact when the member has one box in c, the common
    case), ``g_i`` the identity or, with ``calibration='platt'``,
    ``g_i(s) = sigmoid(a_i logit(s) + β_i)`` (:mod:`mmens.ops.calibration`;
    ``a_i = exp(α_i) > 0`` keeps each member's ranking) and ``θ = softplus(φ) > 0``, trained
    with BCE against match / no-match at IoU 0.5 (``J_cls`` on the fused confidence;
    clusters that only overlap crowd boxes are left out). WBF's confidence is a weighted
    mean of the same summed scores, so θ takes the role of hand-tuned WBF weights and g_i
    puts every member on the scale of that confidence. At inference the members' scores
    are calibrated first, then matched and fused by WBF with ``w = θ / mean(θ)``.
    (Tying a detector's weight to its flip variant's, and shrinking the weights toward
    equal ones, were both below this out of fold: docs/experiments.md.)

    Args:
        num_members (int): N.
        num_classes (int): unused, accepted for config symmetry with LearnedFusionHead.
        calibration (str): ``'none'`` (raw scores, the default: the Platt maps were
            below it out of fold, docs/experiments.md) or ``'platt'``.
        max_iter (int): L-BFGS iterations of :meth:`fit_clusters` (the threshold search's
            inner fits; the Runner's fit takes its optimizer from the config).
    """

    def __init__(self, num_members: int, num_classes: int = 80, calibration: str = 'none',
                 max_iter: int = 100, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if calibration not in CALIBRATIONS:
            raise ValueError(f'LearnedWeightsHead: calibration must be one of '
                             f'{CALIBRATIONS}, got {calibration!r}')
        self.num_members = num_members
        self.calibration = calibration
        self.max_iter = max_iter
        self.phi = nn.Parameter(torch.zeros(num_members))  # θ = softplus(φ)
        self.bias = nn.Parameter(torch.zeros(1))
        if calibration == 'platt':  # the identity map at the start
            self.cal_log_slope = nn.Parameter(torch.zeros(num_members))  # α: a = exp(α)
            self.cal_shift = nn.Parameter(torch.zeros(num_members))  # β

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

    def calibrated(self, scores: Tensor, members: Tensor) -> Tensor:
        """Each member's map ``g_i`` applied to ``scores [M]`` of ``members [M]``
        (differentiable; the raw scores with ``calibration='none'``)."""
        if self.calibration == 'none':
            return scores
        # Bounded maps: the BCE is flat along directions where g_i saturates (g_i ≈ 1 turns
        # member i into a box count), and a saturated map ties the member's own boxes.
        return platt_scores(scores, members, self.calibration_slope(),
                            self.calibration_shift())

    def calibration_slope(self) -> Tensor:
        """``a = exp(α)``, ``Tensor[N]``, ``α`` clamped to ``[-1, 1]``."""
        return self.cal_log_slope.clamp(-1.0, 1.0).exp()

    def calibration_shift(self) -> Tensor:
        """``β``, ``Tensor[N]``, clamped to ``[-2, 2]``."""
        return self.cal_shift.clamp(-2.0, 2.0)

    @torch.no_grad()
    def matching_scores(self, scores: Tensor, members: Tensor) -> Tensor:
        """The scores to match and fuse: raw while training (the clusters are fixed while
        the calibration learns), calibrated otherwise."""
        if self.training:
            return scores
        return self.calibrated(scores, members).to(scores.dtype)

    def forward(self, clusters) -> Tuple[Tensor, Tensor]:
        """WBF's fused boxes ``[C, 4]`` and scores ``[C]`` (clusters matched with the
        learned weights)."""
        return clusters.fused_boxes, clusters.fused_scores

    def loss_by_feat(self, clusters, targets: TargetAssignment) -> Dict[str, Tensor]:
        return self.loss_of_features(*self.features(clusters), targets)

    @staticmethod
    def features(clusters) -> Tuple[Tensor, Tensor, Tensor]:
        """What the loss reads of the clusters, fixed while fitting: each member's mean
        raw score ``[C, N]``, box count ``[C, N]`` (float) and index ``[C, N]``."""
        c, n = clusters.counts.shape
        members = torch.arange(n, device=clusters.counts.device).expand(c, n)  # [C, N]
        return clusters.y_hat[..., 4], clusters.counts.to(clusters.y_hat.dtype), members

    def loss_of_features(self, mean: Tensor, counts: Tensor, members: Tensor,
                         targets: TargetAssignment) -> Dict[str, Tensor]:
        """The BCE of :meth:`loss_by_feat` from its :meth:`features`."""
        c, n = mean.shape
        cal = self.calibrated(mean.reshape(-1), members.reshape(-1)).view(c, n)  # [C, N]
        summed = cal * counts  # [C, N], 0 where absent
        logit = summed @ self.theta().to(summed.dtype) + self.bias  # [C]
        weight = (~targets.ignored).to(logit.dtype)  # [C]
        bce = nn.functional.binary_cross_entropy_with_logits(
            logit, targets.y_cls.to(logit.dtype), weight=weight, reduction='sum')
        return {'loss_cls': bce / weight.sum().clamp_min(1.0)}

    def fit_clusters(self, clusters, targets: TargetAssignment) -> None:
        """Fit every parameter on fixed clusters by full-batch L-BFGS (``max_iter``
        iterations, strong Wolfe line search): the recommended config's fit, for the inner
        fits of a threshold search (:mod:`mmens.models.detectors.fusion_search`)."""
        opt = torch.optim.LBFGS(self.parameters(), lr=1.0, max_iter=self.max_iter,
                                line_search_fn='strong_wolfe')
        features = self.features(clusters)

        def closure():
            opt.zero_grad()
            loss = self.loss_of_features(*features, targets)['loss_cls']
            loss.backward()
            return loss
        with torch.enable_grad():
            opt.step(closure)

    def predict_by_feat(self, clusters) -> Tuple[Tensor, Tensor]:
        return self(clusters)
