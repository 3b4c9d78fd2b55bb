"""Learned member weights for WBF: the default learned fusion."""
from typing import Callable, Dict, Optional, Tuple

import torch
from mmens.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmens.ops.targets import TargetAssignment

#: parameters of the per-member Platt score calibration, deleted (below raw scores out of
#: fold, docs/experiments.md): checkpoints that carry them are refused
DELETED_CALIBRATION_KEYS = ('cal_log_slope', 'cal_shift')


def fit_lbfgs(module: nn.Module, loss_fn: Callable[[], Tensor], max_iter: int) -> None:
    """Minimise ``loss_fn()`` over ``module``'s parameters by full-batch L-BFGS
    (``max_iter`` iterations, strong Wolfe line search), gradients on even under
    ``torch.no_grad``: the heads' ``fit_clusters``."""
    opt = torch.optim.LBFGS(module.parameters(), lr=1.0, max_iter=max_iter,
                            line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)


@MODELS.register_module()
class LearnedWeightsHead(BaseModule):
    """Learns the members' WBF weights from data instead of grid-searching them.

    On clusters matched with equal weights, the confidence of cluster c is modelled as
    ``z_c = Σ_i θ_i S_ci + b`` with ``S_ci`` member i's summed raw score in c
    (``counts_ci · mean score``: exact when the member has one box in c, the common
    case) and ``θ = softplus(φ) > 0``, trained
    with BCE against match / no-match at IoU 0.5 (``J_cls`` on the fused confidence;
    clusters that only overlap crowd boxes are left out). WBF's confidence is a weighted
    mean of the same summed scores, so θ takes the role of hand-tuned WBF weights. At
    inference the members' raw scores are matched and fused by WBF with
    ``w = θ / mean(θ)``. (Tying a detector's weight to its flip variant's, shrinking the
    weights toward equal ones, and a per-member Platt map of the scores were all below
    this out of fold: docs/experiments.md.)

    Args:
        num_members (int): N.
        num_classes (int): unused, accepted for config symmetry with LearnedFusionHead.
        max_iter (int): L-BFGS iterations of :meth:`fit_clusters` (the threshold search's
            inner fits; the Runner's fit takes its optimizer from the config).
    """

    def __init__(self, num_members: int, num_classes: int = 80, max_iter: int = 100,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_members = num_members
        self.max_iter = max_iter
        self.phi = nn.Parameter(torch.zeros(num_members))  # θ = softplus(φ)
        self.bias = nn.Parameter(torch.zeros(1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # mmengine's load_checkpoint is not strict: without this refusal a calibrated
        # checkpoint would load and fuse its raw scores, silently unlike its fit.
        found = [prefix + k for k in DELETED_CALIBRATION_KEYS if prefix + k in state_dict]
        if found:
            raise ValueError(f'LearnedWeightsHead: the checkpoint carries {found}, a per-member '
                             'score calibration since deleted (docs/experiments.md): refit it')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        return self.loss_of_features(*self.features(clusters), targets)

    @staticmethod
    def features(clusters) -> Tuple[Tensor, Tensor]:
        """What the loss reads of the clusters, fixed while fitting: each member's mean
        raw score ``[C, N]`` and box count ``[C, N]`` (float)."""
        return clusters.y_hat[..., 4], clusters.counts.to(clusters.y_hat.dtype)

    def loss_of_features(self, mean: Tensor, counts: Tensor,
                         targets: TargetAssignment) -> Dict[str, Tensor]:
        """The BCE of :meth:`loss_by_feat` from its :meth:`features`."""
        summed = mean * counts  # [C, N], 0 where absent
        logit = summed @ self.theta().to(summed.dtype) + self.bias  # [C]
        weight = (~targets.ignored).to(logit.dtype)  # [C]
        bce = nn.functional.binary_cross_entropy_with_logits(
            logit, targets.y_cls.to(logit.dtype), weight=weight, reduction='sum')
        return {'loss_cls': bce / weight.sum().clamp_min(1.0)}

    def fit_clusters(self, clusters, targets: TargetAssignment) -> None:
        """Fit every parameter on fixed clusters by full-batch L-BFGS (``max_iter``
        iterations, strong Wolfe line search): the recommended config's fit, for the inner
        fits of a threshold search (:mod:`mmens.models.detectors.fusion_search`)."""
        features = self.features(clusters)
        fit_lbfgs(self, lambda: self.loss_of_features(*features, targets)['loss_cls'],
                  self.max_iter)

    def predict_by_feat(self, clusters) -> Tuple[Tensor, Tensor]:
        return self(clusters)
