"""Gradient of the expected loss of perturbed selections, per image (no linearisation).

The perturbed optimizer of :mod:`mmens.ops.perturbed` passes the upstream gradient
``∂L/∂x`` through ``J K_σ``: a linearisation of the loss in the selection x. For a loss that
is not linear in x (the fused output of a subset is not), that can point the wrong way: when
a member's fusion weight should shrink a little, ``∂L/∂x_i > 0``, and the knapsack can only
act on it by dropping the member, even when the loss without it is higher.

Here the loss itself is perturbed instead (Berthet et al. 2020, Prop. 3.1 applied to
``F(c) = L(K(c))``): for image b,

    ∇_{ĉ_b} E_Z[L(K(ĉ_b + σZ))] = (1/σ) E_Z[(L(K(ĉ_b + σZ)) − L(K(ĉ_b))) ∇h(Z)],

with the other images held at their exact selections (the loss is not a sum over images,
e.g. a ranking across images, so each image gets its own loss change, not the batch's:
that keeps the estimate free of the other images' noise). Only the distinct selections
that the M samples produce are evaluated (for N members at most 2^N, e.g. ≤ 63): the
caller's ``loss_deltas`` gets them as candidates and returns each image's loss change.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .perturbed import sample_noise

#: ``loss_deltas(base [B, N], candidates [U, N]) -> [U, B]``: the loss with image b alone
#: selecting ``candidates[u]`` (the others ``base``), minus the loss at ``base``.
LossDeltas = Callable[[Tensor, Tensor], Tensor]


def perturbed_loss_grad(scores: Tensor, solver: Callable[[Tensor], Tensor],
                        loss_deltas: LossDeltas, num_samples: int = 1000, sigma: float = 0.1,
                        noise: str = 'normal', generator: Optional[torch.Generator] = None
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """Monte Carlo gradient of each image's expected loss under perturbed selection.

    Args:
        scores (Tensor): ``[B, N]`` ĉ (read only; no autograd).
        solver: exact batched selection ``Tensor[..., N] -> 0/1 Tensor[..., N]``.
        loss_deltas: see :data:`LossDeltas`.
        num_samples (int): M perturbations per image, solved in one batched call.
        sigma (float): σ > 0.
        noise (str): ``'normal'`` or ``'gumbel'``.
        generator (torch.Generator, optional): drives the noise.

    Returns:
        ``grad [B, N]`` (the estimate of ∇_ĉ), ``base [B, N]`` (the exact selection
        ``K(ĉ)``) and ``expected [B]`` (the Monte Carlo mean loss change of each image
        against ``base``).
    """
    if scores.dim() != 2:
        raise ValueError(f'scores must be [B, N], got shape {tuple(scores.shape)}')
    n = scores.shape[-1]
    if n > 62:
        raise ValueError(f'at most 62 members (selections are coded as int64), got {n}')
    with torch.no_grad():
        z, grad_h = sample_noise((num_samples, ) + tuple(scores.shape), noise, generator,
                                 scores.dtype, scores.device)  # [M, B, N] each
        solutions = solver(torch.cat([scores[None], scores[None] + sigma * z]))  # [M+1, B, N]
        base, samples = solutions[0].to(scores.dtype), solutions[1:]
        bits = 2 ** torch.arange(n, device=scores.device)  # [N]
        unique, inverse = torch.unique(subset_codes(samples), return_inverse=True)  # [U],[M,B]
        candidates = ((unique[:, None] // bits) % 2).to(scores.dtype)  # [U, N]
        deltas = loss_deltas(base, candidates)  # [U, B]
        same = (candidates[:, None, :] == base[None]).all(-1)  # [U, B]
        deltas = deltas.masked_fill(same, 0.0)  # exactly 0 where nothing changes
        per_sample = torch.gather(deltas, 0, inverse)  # [M, B]
        grad = (per_sample[..., None] * grad_h).mean(0) / sigma  # [B, N]
    return grad, base, per_sample.mean(0)


def subset_codes(x: Tensor) -> Tensor:
    """``[..., N]`` 0/1 selections → ``[...]`` int64 bitmasks (member i is bit i)."""
    bits = 2 ** torch.arange(x.shape[-1], device=x.device)
    return ((x > 0.5).long() * bits).sum(-1)


def perturbed_loss_surrogate(scores: Tensor, grad: Tensor) -> Tensor:
    """A zero-valued scalar whose gradient in ``scores`` is ``grad`` (``[B, N]`` each)."""
    dot = (scores * grad.detach()).sum()
    return dot - dot.detach()
