"""Learned fusion head: Θ over the members of each matched cluster (docs/theory.md §2–§4)."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmens.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmens.ops.features import cluster_features, feature_names
from mmens.ops.targets import TargetAssignment
from mmens.ops.theta import (WBF_CONF_TYPES, j_cls, j_cons, j_reg, theta_from_phi,
                             theta_fuse, wbf_theta_fuse)
from .learned_weights_head import fit_lbfgs

THETA_MODES = ('global', 'conditional', 'wbf')


@MODELS.register_module()
class LearnedFusionHead(BaseModule):
    """Fuses each cluster Ŷ ``[N, 5]`` with learned member weights Θ.

    ``A_box = Σ_i m_i θ_i Ŷ_i,box / Σ_i m_i θ_i`` (masked, renormalised; equal to the seed's
    ŶᵀΘ with every member present and ΣΘ = 1), trained with
    ``J = λ_reg J_reg + λ_cons J_cons + λ_cls J_cls`` (docs/theory.md §4).

    Modes:

    * ``'global'``: one Θ ``[N]`` (the seed's method). Θ is also used, detached, as the
      members' weights inside the matching (like hand-tuned WBF weights).
    * ``'conditional'``: a small net maps per-cluster features
      (:func:`mmens.ops.features.cluster_features`) to the cluster's Θ row and to a rescored
      confidence, trained with BCE on match / no-match (``J_cls`` on the fused score);
      a global Θ is still learned for the matching weights.
      (A Θ row per class, ``'per_class'``, scored 5.6 AP below grid-searched WBF out of fold
      and was deleted: docs/experiments.md.)
    * ``'wbf'``: Θ on the WBF form (:func:`mmens.ops.theta.wbf_theta_fuse`): box
      ``Σ θ S b / Σ θ S`` and WBF's ``conf_type`` score with weights Θ, so Θ ∝ 1 is WBF.
      Θ starts at ``anchor_weights`` (the learned WBF weights of the same training images)
      and ``shrink`` pulls log Θ toward them; ``J_cls`` is the BCE of the fused score.
      The matching uses the anchor weights in training and at test time alike, so Θ
      trains on the clusters it fuses at test time.

    Args:
        num_members (int): N. num_classes (int): K.
        theta_mode (str): see above. theta_param (str): ``'softplus'`` (default; θ > 0),
            ``'sigmoid'`` (0 < θ < 1) or ``'identity'`` (raw Θ: the seed's SGD update rule).
        score_mode (str): fused score of ``global``: ``'seed'`` (Σ m θ p),
            ``'normalized'`` or ``'noisy_or'`` (docs/theory.md §2).
        hidden (int): width of the conditional net (0: logistic regression).
        loss_reg, loss_cons, loss_cls (float): λ_reg, λ_cons, λ_cls.
        init_theta (float): initial θ (all members equal; not ``'wbf'``).
        anchor_weights (list[float], optional): ``'wbf'``: the matching weights and Θ's
            start and shrinkage target (normalised to ΣΘ = 1; default equal).
        shrink (float): ``'wbf'``: λ of ``λ/2 Σ_i (log θ_i − log θ0_i)²`` (default: the
            value inner CV chose most often, docs/experiments.md).
        conf_type (str): ``'wbf'``: WBF's ``conf_type`` (that of the model's matching).
    """

    def __init__(self,
                 num_members: int,
                 num_classes: int = 80,
                 theta_mode: str = 'global',
                 theta_param: str = 'softplus',
                 score_mode: str = 'seed',
                 hidden: int = 32,
                 loss_reg: float = 1.0,
                 loss_cons: float = 1.0,
                 loss_cls: float = 1.0,
                 init_theta: Optional[float] = None,
                 anchor_weights: Optional[Sequence[float]] = None,
                 shrink: float = 0.01,
                 conf_type: str = 'avg',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if theta_mode not in THETA_MODES:
            raise ValueError(f'LearnedFusionHead: theta_mode must be one of {THETA_MODES}, '
                             f'got {theta_mode!r}')
        self.num_members, self.num_classes = num_members, num_classes
        self.theta_mode, self.theta_param, self.score_mode = theta_mode, theta_param, score_mode
        self.lambdas = dict(reg=loss_reg, cons=loss_cons, cls=loss_cls)
        init = 1.0 / num_members if init_theta is None else init_theta
        init = torch.full((num_members,), init)
        if theta_mode == 'wbf':
            if conf_type not in WBF_CONF_TYPES:
                raise ValueError(f'LearnedFusionHead: conf_type must be one of '
                                 f'{WBF_CONF_TYPES} with theta_mode=\'wbf\', got {conf_type!r}')
            init = self._anchor(anchor_weights, num_members)
            self.register_buffer('anchor', init.clone())  # [N], Σ = 1
            self.shrink, self.conf_type = float(shrink), conf_type
        phi0 = self._phi_of(init)
        self.phi = nn.Parameter(phi0.clone())  # [N] global Θ (matching weights)
        if theta_mode == 'conditional':
            f = len(feature_names(num_members))
            self.feat_norm = nn.BatchNorm1d(f, affine=False)
            layers = [nn.Linear(f, hidden), nn.ReLU()] if hidden else []
            self.net = nn.Sequential(*layers, nn.Linear(hidden or f, num_members + 1))

    @staticmethod
    def _anchor(weights: Optional[Sequence[float]], n: int) -> Tensor:
        """``anchor_weights`` checked and normalised to sum 1, ``Tensor[N]``."""
        w = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float)
        if w.shape != (n,) or not bool(torch.isfinite(w).all() & (w > 0).all()):
            raise ValueError(f'LearnedFusionHead: anchor_weights must be {n} finite '
                             f'weights > 0, got {weights!r}')
        return w / w.sum()

    def _phi_of(self, theta: Tensor) -> Tensor:
        if self.theta_param == 'softplus':
            return torch.log(torch.expm1(theta))
        if self.theta_param == 'sigmoid':
            return torch.logit(theta)
        return theta

    def theta(self) -> Tensor:
        """The global Θ, ``Tensor[N]``."""
        return theta_from_phi(self.phi, self.theta_param)

    def theta_table(self) -> Tensor:
        """Θ for reports: the global ``[N]`` (detached)."""
        return self.theta().detach()

    def matching_weights(self) -> Tensor:
        """Member weights for the matching (detached global Θ; ``'wbf'``: the anchor
        weights, fixed), ``Tensor[N]``."""
        if self.theta_mode == 'wbf':
            return self.anchor * self.num_members
        return self.theta().detach().clamp_min(1e-4)

    def forward(self, clusters) -> Tuple[Tensor, Tensor]:
        """Fused boxes ``[C, 4]`` and fused scores ``[C]`` (probabilities)."""
        theta, logit = self._theta_rows(clusters)
        if self.theta_mode == 'wbf':
            return self._wbf_fuse(clusters, self.theta())
        boxes, scores = theta_fuse(clusters.y_hat, clusters.mask, theta,
                                   score_mode=self.score_mode)
        if logit is not None:
            scores = torch.sigmoid(logit)
        return boxes, scores.clamp(0.0, 1.0)

    def _theta_rows(self, clusters) -> Tuple[Tensor, Optional[Tensor]]:
        c = clusters.y_hat.shape[0]
        if self.theta_mode in ('global', 'wbf'):
            return self.theta().expand(c, -1), None  # [C, N]
        feats = self._features(clusters)  # [C, F]
        if c == 0:
            return clusters.y_hat.new_zeros(0, self.num_members), clusters.y_hat.new_zeros(0)
        out = self.net(self.feat_norm(feats) if c > 1 or not self.training else feats)
        theta = nn.functional.softplus(out[:, :self.num_members]) + 1e-4  # [C, N]
        return theta, out[:, self.num_members]  # [C, N], [C]

    def _features(self, clusters) -> Tensor:
        """Cluster features, computed once per clusters object (full-batch training
        evaluates the loss on the same clusters many times)."""
        cached = getattr(self, '_feat_cache', None)
        if cached is not None and cached[0] is clusters.y_hat:
            return cached[1]
        feats = cluster_features(clusters.y_hat, clusters.mask, clusters.labels,
                                 clusters.image_index, clusters.fused_boxes,
                                 clusters.fused_scores, clusters.counts, self.num_members)
        self._feat_cache = (clusters.y_hat, feats)
        return feats

    def _wbf_fuse(self, clusters, theta: Tensor) -> Tuple[Tensor, Tensor]:
        return wbf_theta_fuse(clusters.y_hat, clusters.mask, clusters.counts,
                              theta.to(clusters.y_hat.dtype), conf_type=self.conf_type)

    def _wbf_loss(self, clusters, targets: TargetAssignment) -> Dict[str, Tensor]:
        """The seed's J on the WBF form, plus the shrinkage toward the anchor."""
        theta = self.theta()
        a_box, score = self._wbf_fuse(clusters, theta)  # a shared Θ [N]
        matched = targets.y_cls > 0
        weight = (~targets.ignored).to(score.dtype)  # crowd-only clusters don't count
        bce = nn.functional.binary_cross_entropy(
            score.clamp(1e-6, 1 - 1e-6), targets.y_cls.to(score.dtype), weight=weight,
            reduction='sum')
        drift = torch.log(theta) - torch.log(self.anchor)  # [N]
        return {'loss_reg': self.lambdas['reg'] * j_reg(a_box, targets.y_box.to(a_box.dtype),
                                                        matched),
                'loss_cls': self.lambdas['cls'] * bce / weight.sum().clamp_min(1.0),
                'loss_cons': self.lambdas['cons'] * j_cons(theta),
                'loss_shrink': 0.5 * self.shrink * (drift ** 2).sum()}

    def fit_clusters(self, clusters, targets: TargetAssignment, max_iter: int = 100) -> None:
        """Fit on fixed clusters by full-batch L-BFGS (strong Wolfe line search), as the
        Θ-on-WBF config's Runner fit does: for inner cross-validation of ``shrink``."""
        fit_lbfgs(self, lambda: sum(self.loss_by_feat(clusters, targets).values()), max_iter)

    def loss_by_feat(self, clusters, targets: TargetAssignment) -> Dict[str, Tensor]:
        """J terms averaged over clusters (``loss_reg`` over matched clusters only)."""
        if self.theta_mode == 'wbf':
            return self._wbf_loss(clusters, targets)
        theta, logit = self._theta_rows(clusters)
        a_box, _ = theta_fuse(clusters.y_hat, clusters.mask, theta)
        matched = targets.y_cls > 0
        losses = {'loss_reg': self.lambdas['reg'] * j_reg(a_box, targets.y_box, matched)}
        if logit is None:  # the seed's per-member BCE on θ_i p_i
            losses['loss_cls'] = self.lambdas['cls'] * j_cls(
                theta, clusters.y_hat[..., 4], clusters.mask, targets.y_cls)
        else:  # BCE of the rescored confidence; ignored clusters (crowd) don't count
            weight = (~targets.ignored).float()
            bce = nn.functional.binary_cross_entropy_with_logits(
                logit, targets.y_cls, weight=weight, reduction='sum')
            losses['loss_cls'] = self.lambdas['cls'] * bce / weight.sum().clamp_min(1.0)
            # the global Θ (matching weights) keeps the seed's objective
            g = self.theta().expand(len(logit), -1)
            losses['loss_cls_global'] = self.lambdas['cls'] * j_cls(
                g, clusters.y_hat[..., 4], clusters.mask, targets.y_cls)
        losses['loss_cons'] = self.lambdas['cons'] * j_cons(self.theta())
        return losses

    def predict_by_feat(self, clusters) -> Tuple[Tensor, Tensor]:
        """Fused boxes ``[C, 4]`` (normalised) and scores ``[C]``."""
        return self(clusters)
