"""Perturbed optimizers (Berthet et al., 2020) around any batched selection solver.

For a solver ``K(c) = argmax_{x ∈ X} cᵀx`` (here top-k or 0/1 knapsack), the perturbed optimizer is

    K_σ(c) = E_Z[K(c + σZ)],   Z ~ ν (standard normal or standard Gumbel, i.i.d. per item).

If ``ν(z) ∝ exp(-h(z))``, then ``J_c K_σ(c) = (1/σ) E_Z[K(c + σZ) ∇h(Z)ᵀ]``
(Berthet et al., Prop. 3.1), i.e. ``∇h = -∇_Z log ν``:

- normal:  ``log ν(z) = -z²/2 + const``      ⇒ ``∇h(z) = z``;
- Gumbel:  ``log ν(z) = -z - exp(-z)``       ⇒ ``∇h(z) = 1 - exp(-z)``.

Note the sign: with ``+∇_Z log ν`` (as in an earlier version of the design notes; docs/theory.md
§5.3) the estimate is the *negative* Jacobian. ``tests/test_ops/test_knapsack.py`` pins it against finite differences and
against the closed form ``K_σ = softmax(c/σ)`` of top-1 under Gumbel noise.

The Monte-Carlo vector-Jacobian product for an upstream gradient ``g`` is

    ∇_c ≈ (1/(Mσ)) Σ_m (gᵀ K(c + σZ_m)) ∇h(Z_m),

and all M perturbed problems (plus the unperturbed one) are solved in ONE batched solver
call. Nothing in the forward or backward synchronises with the host.

Control variate (``control_variate=True``, the default): since ``E[∇h(Z)] = 0`` for both
noises, subtracting the unperturbed solution's term leaves the estimate unbiased,

    ∇_c ≈ (1/(Mσ)) Σ_m gᵀ(K(c + σZ_m) − K(c)) ∇h(Z_m),

and removes its main noise: where no perturbation changes the solution, the estimate is
exactly 0 instead of ``(gᵀK(c)) · mean_m ∇h(Z_m) / σ`` (standard deviation ≈
``|gᵀK(c)| / (σ√M)`` per item). Without it, an optimizer that normalises its steps (Adam)
turns that zero-mean noise into a random walk of the scores.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: Noise distributions supported by :func:`sample_noise`.
NOISE_TYPES = ('normal', 'gumbel')

Solver = Callable[[Tensor], Tensor]


def sample_noise(shape: Sequence[int],
                 noise: str = 'normal',
                 generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Sample Z ~ ν and ``∇h(Z) = -∇_Z log ν(Z)``.

    Args:
        shape: shape of the sample, e.g. ``(M, *batch, N)``.
        noise: ``'normal'`` (standard normal) or ``'gumbel'`` (standard Gumbel, location 0,
            scale 1, mean = Euler's γ).
        generator: optional ``torch.Generator`` on ``device``, for reproducibility.
        dtype, device: of the returned tensors.

    Returns:
        ``(z, grad_h)``: ``Tensor[*shape]`` each.
    """
    if noise == 'normal':
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z, z
    if noise == 'gumbel':
        u = torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)
        tiny = torch.finfo(dtype).tiny
        u = u.clamp(min=tiny, max=1.0 - torch.finfo(dtype).eps)  # keep log(-log u) finite
        z = -torch.log(-torch.log(u))  # [*shape]
        return z, 1.0 - torch.exp(-z)
    raise ValueError(f'noise must be one of {NOISE_TYPES}, got {noise!r}')


class PerturbedFunction(torch.autograd.Function):
    """``autograd.Function`` behind :func:`perturbed_select`; see the module docstring."""

    @staticmethod
    def forward(ctx, scores: Tensor, solver: Solver, num_samples: int, sigma: float,
                noise: str, hard: bool, generator: Optional[torch.Generator],
                control_variate: bool = True) -> Tensor:
        z, grad_h = sample_noise((num_samples, ) + tuple(scores.shape), noise, generator,
                                 scores.dtype, scores.device)  # [M, ..., N] each
        perturbed = scores.unsqueeze(0) + sigma * z  # [M, ..., N]
        if hard or control_variate:
            # The unperturbed problem rides along in the same batched solve.
            problems = torch.cat([scores.unsqueeze(0), perturbed], dim=0)  # [M + 1, ..., N]
            solutions = solver(problems).to(scores.dtype)  # [M + 1, ..., N]
            base, samples = solutions[0], solutions[1:]  # [..., N], [M, ..., N]
        else:
            samples = solver(perturbed).to(scores.dtype)  # [M, ..., N]
            base = None
        out = base if hard else samples.mean(dim=0)  # [..., N]
        ctx.save_for_backward(samples - base if control_variate else samples, grad_h)
        ctx.sigma = sigma
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        samples, grad_h = ctx.saved_tensors  # [M, ..., N] each: K_m (or K_m − K(c))
        proj = (samples * grad_out.unsqueeze(0)).sum(dim=-1, keepdim=True)  # [M, ..., 1] gᵀK_m
        grad = (proj * grad_h).mean(dim=0) / ctx.sigma  # [..., N]
        return grad, None, None, None, None, None, None, None


def check_perturbation(num_samples: int, sigma: float, noise: str) -> None:
    """Raise :class:`ValueError` unless ``num_samples >= 1``, ``sigma > 0`` and
    ``noise`` is one of :data:`NOISE_TYPES`."""
    if int(num_samples) < 1:
        raise ValueError(f'num_samples must be >= 1, got {num_samples}')
    if not float(sigma) > 0:
        raise ValueError(f'sigma must be > 0, got {sigma}')
    if noise not in NOISE_TYPES:
        raise ValueError(f'noise must be one of {NOISE_TYPES}, got {noise!r}')


def perturbed_select(scores: Tensor,
                     solver: Solver,
                     num_samples: int = 1000,
                     sigma: float = 0.1,
                     noise: str = 'normal',
                     hard: bool = True,
                     generator: Optional[torch.Generator] = None,
                     control_variate: bool = True) -> Tensor:
    """Differentiable (perturbed) version of a batched linear-objective solver.

    Args:
        scores: ``Tensor[..., N]`` floating, the objective ĉ.
        solver: maps ``Tensor[..., N]`` to the exact ``argmax`` solution ``Tensor[..., N]``
            (0/1 valued), batched over any leading dims
            (e.g. :func:`~mmens.ops.knapsack.topk_mask`).
        num_samples: M, number of Monte-Carlo perturbations (≥ 1).
        sigma: σ > 0, perturbation scale.
        noise: ``'normal'`` or ``'gumbel'``.
        hard: if True the forward returns ``K(ĉ)`` (exact, unperturbed) and the backward is that
            of ``K_σ``; if False the forward returns the Monte-Carlo mean ``K_σ(ĉ)``.
        generator: optional ``torch.Generator`` (on ``scores.device``).
        control_variate: subtract the unperturbed solution in the gradient estimate (same
            expectation, exactly 0 where no perturbation changes the solution; see the module
            docstring). False gives the plain estimator.

    Returns:
        ``Tensor[..., N]``: the selection (hard: 0/1; soft: in [0, 1]), with ``scores.dtype``.
    """
    if not torch.is_floating_point(scores):
        raise ValueError(f'scores must be floating point, got {scores.dtype}')
    if scores.dim() < 1:
        raise ValueError('scores must have at least one dim [..., N]')
    check_perturbation(num_samples, sigma, noise)
    return PerturbedFunction.apply(scores, solver, int(num_samples), float(sigma), noise,
                                   bool(hard), generator, bool(control_variate))
