"""Learned fusion with member weights Θ and its objective (docs/theory.md §2, §4).

Shapes: C clusters, N members. ``y_hat`` is ``Tensor[C, N, 5]`` (x1, y1, x2, y2,
score; coords normalised), ``mask`` is ``Tensor[C, N]`` bool. Θ is either one
shared ``Tensor[N]`` or per-cluster rows ``Tensor[C, N]`` (e.g. a net's output).
:func:`wbf_theta_fuse` is Θ on the WBF form: WBF's own box and score with weights Θ.

Parameterisations of Θ = f(φ) (:func:`theta_from_phi`):

* ``'identity'``: Θ = φ, the seed's raw Θ with update Θ ← Θ − α∇J (plain SGD).
  Θ may leave (0, 1/p); J_cls then relies on its ε-clamp.
* ``'softplus'``: Θ = log(1 + e^φ) > 0, unbounded above.
* ``'sigmoid'``: Θ = 1 / (1 + e^−φ) ∈ (0, 1), so 0 < θ p < 1 for p ∈ (0, 1).

Closed-form gradients (``grad_*``) are of the *per-cluster* loss w.r.t. that
cluster's Θ row and return ``Tensor[C, N]``; for a shared Θ the gradient of the
reduced loss is their sum / mean over rows (the same divisor as the reduction).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'THETA_PARAMS', 'SCORE_MODES', 'WBF_CONF_TYPES', 'theta_from_phi', 'phi_from_theta',
    'dtheta_dphi', 'theta_fuse', 'wbf_theta_fuse', 'j_reg', 'j_cons', 'j_cls', 'fusion_loss',
    'grad_j_reg', 'grad_j_cons', 'grad_j_cls'
]

THETA_PARAMS = ('identity', 'softplus', 'sigmoid')
SCORE_MODES = ('seed', 'normalized', 'noisy_or')
#: WBF's ``conf_type`` values whose score is a function of the member rows of a cluster
#: (``'max'`` needs each box's weighted score, which a member's mean row does not keep)
WBF_CONF_TYPES = ('avg', 'box_and_model_avg', 'absent_model_aware_avg')
Number = Union[float, int, Tensor]


def _check_param(param: str) -> None:
    if param not in THETA_PARAMS:
        raise ValueError(f'param must be one of {THETA_PARAMS}, got {param!r}')


def theta_from_phi(phi: Tensor, param: str = 'softplus') -> Tensor:
    """Θ = f(φ) for ``param`` in :data:`THETA_PARAMS` (any shape)."""
    _check_param(param)
    if param == 'softplus':
        return F.softplus(phi)
    if param == 'sigmoid':
        return torch.sigmoid(phi)
    return phi


def phi_from_theta(theta: Tensor, param: str = 'softplus') -> Tensor:
    """Inverse of :func:`theta_from_phi`, e.g. to initialise φ at Θ = 1/N.

    Needs Θ > 0 for softplus and 0 < Θ < 1 for sigmoid.
    """
    _check_param(param)
    if param == 'softplus':
        return theta + torch.log(-torch.expm1(-theta))  # log(e^θ − 1), stable
    if param == 'sigmoid':
        return torch.logit(theta)
    return theta.clone()


def dtheta_dphi(phi: Tensor, param: str = 'softplus') -> Tensor:
    """dΘ/dφ elementwise (chain rule for the closed-form gradients)."""
    _check_param(param)
    if param == 'softplus':
        return torch.sigmoid(phi)
    if param == 'sigmoid':
        s = torch.sigmoid(phi)
        return s * (1 - s)
    return torch.ones_like(phi)


def _rows(theta: Tensor, c: int, n: int) -> Tensor:
    """Θ as per-cluster rows ``Tensor[C, N]`` (broadcast a shared ``[N]``)."""
    if theta.dim() == 1 and theta.shape[0] == n:
        return theta.unsqueeze(0).expand(c, n)
    if theta.dim() == 2 and tuple(theta.shape) == (c, n):
        return theta
    raise ValueError(f'theta must have shape [{n}] or [{c}, {n}], got {list(theta.shape)}')


def _check_yhat(y_hat: Tensor, mask: Tensor, d: int = 5) -> Tuple[int, int]:
    if y_hat.dim() != 3 or y_hat.shape[-1] != d:
        raise ValueError(f'y_hat must have shape [C, N, {d}], got {list(y_hat.shape)}')
    if tuple(mask.shape) != tuple(y_hat.shape[:2]):
        raise ValueError(f'mask must have shape {list(y_hat.shape[:2])}, got {list(mask.shape)}')
    return y_hat.shape[0], y_hat.shape[1]


def _safe_div(num: Tensor, den: Tensor, eps: float) -> Tensor:
    """num / den with |den| < eps replaced by eps (no-member clusters → 0)."""
    den = torch.where(den.abs() < eps, torch.full_like(den, eps), den)
    return num / den


def _reduce(loss: Tensor, reduction: str, count: Number) -> Tensor:
    """'none' → loss; 'sum'; 'mean' → sum / count (0 when count is 0)."""
    if reduction == 'none':
        return loss
    if reduction == 'sum':
        return loss.sum()
    if reduction == 'mean':
        count = torch.as_tensor(count, device=loss.device).to(loss.dtype)
        return loss.sum() / count.clamp(min=1e-12)
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def theta_fuse(y_hat: Tensor, mask: Tensor, theta: Tensor, score_mode: str = 'seed',
               normalize: bool = True, eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    """Fuse each cluster's member rows with Θ (theory §2).

    ``A_box = Σ_i m_i θ_i Ŷ_i,box / Σ_i m_i θ_i`` (``normalize=False``: the seed's
    masked ``Σ_i m_i θ_i Ŷ_i,box`` = ŶᵀΘ). Scores, with ``p_i = Ŷ_i,4``:

    * ``'seed'``: ``Σ_i m_i θ_i p_i``;
    * ``'normalized'``: ``Σ_i m_i θ_i p_i / Σ_i m_i θ_i``;
    * ``'noisy_or'``: ``1 − Π_i (1 − q_i)^{m_i}``, ``q_i = clamp(θ_i p_i, 0, 1)``.

    Args:
        y_hat: ``Tensor[C, N, 5]``; rows with ``mask`` False are ignored.
        mask: ``Tensor[C, N]`` bool.
        theta: ``Tensor[N]`` or ``Tensor[C, N]``.
        eps: denominators with |Σ m θ| < eps are replaced by eps, so clusters
            without members fuse to 0 instead of NaN.

    Returns:
        boxes ``Tensor[C, 4]``, scores ``Tensor[C]``.
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f'score_mode must be one of {SCORE_MODES}, got {score_mode!r}')
    c, n = _check_yhat(y_hat, mask)
    th = _rows(theta, c, n)  # [C, N]
    mask = mask.bool()
    y = torch.where(mask.unsqueeze(-1), y_hat, torch.zeros_like(y_hat))  # [C, N, 5]
    w = th * mask.to(th.dtype)  # [C, N]
    wsum = w.sum(1)  # [C]
    boxes = (w.unsqueeze(-1) * y[..., :4]).sum(1)  # [C, 4]
    if normalize:
        boxes = _safe_div(boxes, wsum.unsqueeze(-1), eps)
    p = y[..., 4]  # [C, N]
    if score_mode == 'noisy_or':
        q = (th * p).clamp(0, 1)  # [C, N]
        scores = 1 - torch.where(mask, 1 - q, torch.ones_like(q)).prod(1)  # [C]
    else:
        scores = (w * p).sum(1)  # [C]
        if score_mode == 'normalized':
            scores = _safe_div(scores, wsum, eps)
    return boxes, scores


def wbf_theta_fuse(y_hat: Tensor, mask: Tensor, counts: Tensor, theta: Tensor,
                   conf_type: str = 'avg', allows_overflow: bool = False,
                   eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    """WBF of each cluster with member weights Θ (theory §2, Θ on the WBF form).

    With ``S_i = k_i p_i`` member i's summed score in the cluster (``k_i`` boxes of mean
    score ``p_i``, box ``b_i`` their score-weighted mean, as :func:`match_boxes` with
    ``member_reduce='mean'`` gives them): box ``Σ_i θ_i S_i b_i / Σ_i θ_i S_i`` and, with
    ``T = Σ_i k_i`` boxes and ``W = Σ_i θ_i`` over all N members, score

    * ``'avg'``: ``Σ_i θ_i S_i / T · min(T, N) / W`` (``T`` with ``allows_overflow``);
    * ``'box_and_model_avg'``: ``Σ_i θ_i S_i / Σ_i θ_i k_i · Σ_i m_i θ_i / W``;
    * ``'absent_model_aware_avg'``: ``Σ_i θ_i S_i / (Σ_i θ_i k_i + Σ_i (1 − m_i) θ_i)``.

    These are ensemble-boxes' formulas with ``weights = Θ``: Θ ∝ 1 (or Θ equal to the
    matching weights) gives the WBF output of the clusters, and the output does not
    depend on the scale of Θ.

    Args:
        y_hat: ``Tensor[C, N, 5]``; counts: ``Tensor[C, N]`` boxes per member (0 where
            ``mask`` is False); mask: ``Tensor[C, N]`` bool.
        theta: ``Tensor[N]`` or ``Tensor[C, N]``, > 0.

    Returns:
        boxes ``Tensor[C, 4]``, scores ``Tensor[C]``.
    """
    if conf_type not in WBF_CONF_TYPES:
        raise ValueError(f'conf_type must be one of {WBF_CONF_TYPES} for Θ on the WBF form, '
                         f'got {conf_type!r}')
    c, n = _check_yhat(y_hat, mask)
    if tuple(counts.shape) != (c, n):
        raise ValueError(f'counts must have shape [{c}, {n}], got {list(counts.shape)}')
    m = mask.bool()
    zero = torch.zeros((), dtype=y_hat.dtype, device=y_hat.device)
    k = torch.where(m, counts.to(y_hat.dtype), zero)  # [C, N]
    s = k * torch.where(m, y_hat[..., 4], zero)  # [C, N] S_i
    sb = s.unsqueeze(-1) * y_hat[..., :4]  # [C, N, 4]
    if theta.dim() == 1:  # a shared Θ: products with Θ are matrix-vector products
        _rows(theta, c, n)  # shape check
        th = theta.to(y_hat.dtype)
        conf, num = s @ th, torch.einsum('cnd,n->cd', sb, th)  # [C], [C, 4]
        wk, present = k @ th, m.to(th.dtype) @ th  # [C], [C]
        wall = th.sum().expand(c)  # [C] W
    else:
        th = _rows(theta, c, n).to(y_hat.dtype)  # [C, N]
        conf, num = (th * s).sum(1), (th.unsqueeze(-1) * sb).sum(1)
        wk, present = (th * k).sum(1), (th * m.to(th.dtype)).sum(1)
        wall = th.sum(1)
    boxes = _safe_div(num, conf.unsqueeze(-1), eps)  # [C, 4]
    if conf_type == 'avg':
        t = k.sum(1)  # [C]
        scale = t if allows_overflow else t.clamp(max=n)
        return boxes, _safe_div(conf, t, eps) * scale / wall
    if conf_type == 'box_and_model_avg':
        return boxes, _safe_div(conf, wk, eps) * present / wall
    return boxes, _safe_div(conf, wk + wall - present, eps)


def j_reg(a_box: Tensor, y_box: Tensor, matched: Optional[Tensor] = None,
          reduction: str = 'mean', avg_factor: Optional[Number] = None) -> Tensor:
    """J_reg = ½‖A_box − y_box‖² on matched clusters only (theory §4).

    Args:
        a_box, y_box: ``Tensor[C, 4]``.
        matched: ``Tensor[C]`` bool (None: all). Unmatched clusters give 0.
        reduction: ``'mean'`` (sum / number matched, 0 when none matched, or
            sum / ``avg_factor``), ``'sum'`` or ``'none'`` (``Tensor[C]``).
    """
    if a_box.dim() != 2 or a_box.shape[-1] != 4 or a_box.shape != y_box.shape:
        raise ValueError(f'a_box and y_box must both be [C, 4], got {list(a_box.shape)} '
                         f'and {list(y_box.shape)}')
    c = a_box.shape[0]
    if matched is None:
        matched = torch.ones(c, dtype=torch.bool, device=a_box.device)
    if tuple(matched.shape) != (c,):
        raise ValueError(f'matched must have shape [{c}], got {list(matched.shape)}')
    matched = matched.bool()
    diff = torch.where(matched.unsqueeze(-1), a_box - y_box, torch.zeros_like(a_box))
    loss = 0.5 * (diff ** 2).sum(-1)  # [C]
    return _reduce(loss, reduction, matched.sum() if avg_factor is None else avg_factor)


def j_cons(theta: Tensor, reduction: str = 'mean') -> Tensor:
    """J_cons = ½(1 − 1ᵀΘ)² (theory §4).

    ``Tensor[N]`` → scalar. ``Tensor[R, N]`` rows → per row, reduced by
    ``reduction`` (``'mean'`` over rows, 0 for R = 0; ``'sum'``; ``'none'`` → [R]).
    """
    if theta.dim() not in (1, 2):
        raise ValueError(f'theta must be [N] or [R, N], got {list(theta.shape)}')
    loss = 0.5 * (1 - theta.sum(-1)) ** 2  # [] or [R]
    if theta.dim() == 1:
        return loss
    return _reduce(loss, reduction, theta.shape[0])


def j_cls(theta: Tensor, p: Tensor, mask: Tensor, y: Tensor, eps: float = 1e-6,
          reduction: str = 'mean', avg_factor: Optional[Number] = None) -> Tensor:
    """J_cls = −Σ_i m_i [y log(θ_i p_i) + (1 − y) log(1 − θ_i p_i)] (theory §4).

    ``θ_i p_i`` is clamped into ``[eps, 1 − eps]`` before the logs, so the loss
    is finite for any Θ; outside that range the clamp cuts the gradient (use
    the sigmoid/softplus parameterisation to stay inside).

    Args:
        theta: ``Tensor[N]`` or ``Tensor[C, N]``.
        p: ``Tensor[C, N]`` member scores (``y_hat[..., 4]``).
        mask: ``Tensor[C, N]`` bool.
        y: ``Tensor[C]`` target in [0, 1] (1 matched / 0, or IoU-valued).
        reduction: ``'mean'`` over clusters (or sum / ``avg_factor``), ``'sum'``,
            ``'none'`` (``Tensor[C]``).
    """
    if p.dim() != 2 or p.shape != mask.shape:
        raise ValueError(f'p and mask must both be [C, N], got {list(p.shape)} and '
                         f'{list(mask.shape)}')
    c, n = p.shape
    if tuple(y.shape) != (c,):
        raise ValueError(f'y must have shape [{c}], got {list(y.shape)}')
    th = _rows(theta, c, n)  # [C, N]
    q = (th * p).clamp(eps, 1 - eps)  # [C, N]
    yb = y.to(q.dtype).unsqueeze(-1)  # [C, 1]
    per = -(yb * torch.log(q) + (1 - yb) * torch.log1p(-q))  # [C, N]
    loss = torch.where(mask.bool(), per, torch.zeros_like(per)).sum(-1)  # [C]
    return _reduce(loss, reduction, c if avg_factor is None else avg_factor)


def fusion_loss(y_hat: Tensor, mask: Tensor, theta: Tensor, y_cls: Tensor, y_box: Tensor,
                matched: Tensor, lambda_reg: float = 1., lambda_cons: float = 1.,
                lambda_cls: float = 1., normalize: bool = True, cls_eps: float = 1e-6
                ) -> Dict[str, Tensor]:
    """J = λ_reg J_reg + λ_cons J_cons + λ_cls J_cls, each averaged over clusters.

    J_reg is averaged over matched clusters, J_cls over all clusters, J_cons over
    Θ rows (a shared ``[N]`` Θ gives a single term). Returns the weighted terms
    as ``{'loss_reg', 'loss_cons', 'loss_cls'}`` (sum them for J).
    """
    a_box, _ = theta_fuse(y_hat, mask, theta, normalize=normalize)  # [C, 4]
    return {
        'loss_reg': lambda_reg * j_reg(a_box, y_box, matched),
        'loss_cons': lambda_cons * j_cons(theta),
        'loss_cls': lambda_cls * j_cls(theta, y_hat[..., 4], mask, y_cls, eps=cls_eps),
    }


def grad_j_reg(y_hat_box: Tensor, theta: Tensor, y_box: Tensor,
               mask: Optional[Tensor] = None, matched: Optional[Tensor] = None,
               normalize: bool = False, eps: float = 1e-12) -> Tensor:
    """Closed-form ∇_Θ of each cluster's J_reg, ``Tensor[C, N]``.

    ``normalize=False`` (theory §4 / seed §7.1): ``Ŷ_box (Ŷ_boxᵀ Θ − y_box)``,
    with masked rows zeroed. ``normalize=True`` (the renormalised fusion,
    S = Σ m θ): ``m_i (Ŷ_i,box − A_box)ᵀ (A_box − y_box) / S``.
    Unmatched clusters (``matched`` False) get 0.

    Args:
        y_hat_box: ``Tensor[C, N, 4]``.
        theta: ``Tensor[N]`` or ``Tensor[C, N]``.
        y_box: ``Tensor[C, 4]``.
    """
    c, n = y_hat_box.shape[:2]
    m = torch.ones(c, n, dtype=torch.bool, device=y_hat_box.device) if mask is None else mask
    _check_yhat(y_hat_box, m, d=4)
    th = _rows(theta, c, n)  # [C, N]
    mf = m.to(th.dtype)  # [C, N]
    a_box, _ = theta_fuse(F.pad(y_hat_box, (0, 1)), m, th, normalize=normalize, eps=eps)
    r = a_box - y_box  # [C, 4]
    if normalize:
        s = (mf * th).sum(1, keepdim=True)  # [C, 1]
        g = _safe_div(torch.einsum('cnd,cd->cn', y_hat_box - a_box.unsqueeze(1), r), s, eps)
    else:
        g = torch.einsum('cnd,cd->cn', y_hat_box, r)  # [C, N]
    g = g * mf
    if matched is not None:
        g = g * matched.to(g.dtype).unsqueeze(-1)
    return g


def grad_j_cons(theta: Tensor) -> Tensor:
    """Closed-form ∇_Θ J_cons = (1ᵀΘ − 1)·1 per row (NOT the seed's Θ − 1)."""
    return (theta.sum(-1, keepdim=True) - 1).expand_as(theta)


def grad_j_cls(theta: Tensor, p: Tensor, mask: Tensor, y: Tensor, eps: float = 1e-6) -> Tensor:
    """Closed-form ∂J_cls/∂θ_i = m_i (θ_i p_i − y) / (θ_i (1 − θ_i p_i)), ``[C, N]``.

    This is seed §7.3, correct for J_cls with its leading minus. Entries where
    the ε-clamp of :func:`j_cls` is active (θ_i p_i outside [eps, 1 − eps]) are 0,
    matching autograd of the clamped loss.
    """
    c, n = p.shape
    th = _rows(theta, c, n)  # [C, N]
    q = th * p  # [C, N]
    yb = y.to(q.dtype).unsqueeze(-1)  # [C, 1]
    live = mask.bool() & (q >= eps) & (q <= 1 - eps)
    g = (q - yb) / (th * (1 - q))
    return torch.where(live, g, torch.zeros_like(g))
