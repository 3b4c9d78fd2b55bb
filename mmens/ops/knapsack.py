"""Exact batched selection solvers and the e2e-CEL selection layer (docs/theory.md §5).

``K(ĉ) = argmax_x ĉᵀx  s.t.  wᵀx ≤ B,  x ∈ {0,1}^N``, batched over leading dims ``[..., N]``:

- :func:`topk_mask`: unit costs, B = k. Selects **exactly** k items, whatever their sign.
- :func:`knapsack`: real non-negative costs. Maximises the objective, so an item with ĉ ≤ 0 is
  never taken (there is no "fill the budget" option: to force a fixed count use top-k).
  Exact w.r.t. costs discretised to ``B / num_bins`` (rounded up, see :func:`discretize_costs`).
- :class:`PerturbedSelector`: the perturbed (differentiable) layer built on either solver.

Pure torch (no mmcv/mmdet/mmengine), device-agnostic, no host syncs in the hot path.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .knapsack_enum import MAX_ITEMS, feasible_subsets, knapsack_exhaustive
from .perturbed import check_perturbation, perturbed_select

#: Tolerance, in bins, absorbed before rounding a cost up (float error, e.g. 0.3 / 0.1).
BIN_TOL = 1e-6


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Exact top-k selection (unit costs, budget k).

    Args:
        scores: ``Tensor[..., N]`` floating. Ties are broken by ``torch.topk``.
        k: number of items to select, ``0 ≤ k ≤ N``.

    Returns:
        ``Tensor[..., N]`` of ``scores.dtype``: 1 for the k largest scores, else 0.
    """
    n = scores.shape[-1]
    if not 0 <= int(k) <= n:
        raise ValueError(f'k must be in [0, N={n}], got {k}')
    mask = torch.zeros_like(scores)  # [..., N]
    if k == 0:
        return mask
    idx = scores.topk(int(k), dim=-1).indices  # [..., k]
    return mask.scatter_(-1, idx, 1.0)  # [..., N]


def discretize_costs(costs: Tensor, budget: Tensor, num_bins: int) -> Tensor:
    """Integer costs in units of ``budget / num_bins``, rounded UP (so feasibility is kept).

    ``w_int = ceil(w · num_bins / B − BIN_TOL)``, computed in float64 and clipped to
    ``num_bins + 1`` (= never affordable). Zero costs stay 0; with B = 0 every positive cost is
    unaffordable. With integer costs and integer B, ``num_bins = B`` makes this exact.

    Args:
        costs: ``Tensor[..., N]`` non-negative.
        budget: ``Tensor[...]`` non-negative (broadcastable against ``costs[..., 0]``).
        num_bins: number of budget bins (≥ 1).

    Returns:
        ``Tensor[..., N]`` long in ``[0, num_bins + 1]``.
    """
    w = costs.double()  # [..., N]
    b = budget.double().unsqueeze(-1)  # [..., 1]
    q = torch.where(w > 0, w * num_bins / b, torch.zeros_like(w))  # [..., N], inf if b == 0
    q = (q - BIN_TOL).ceil().clamp(min=0, max=num_bins + 1)  # [..., N]
    return q.long()


def knapsack(scores: Tensor,
             costs: Union[Tensor, Sequence[float]],
             budget: Union[Tensor, float],
             num_bins: int = 100,
             validate: bool = True) -> Tensor:
    """Exact 0/1 knapsack ``max ĉᵀx s.t. wᵀx ≤ B`` by dynamic programming, batched.

    The DP runs over the discretised costs of :func:`discretize_costs` (resolution
    ``B / num_bins`` per problem, costs rounded up): the returned x is optimal for those costs and
    feasible for the real ones (up to ``BIN_TOL`` bins per item of float slack). Items with ĉ ≤ 0
    are never taken; items costing more than B never; an item is taken only if it strictly
    improves the DP value (deterministic tie-breaking).
    Cost: ``O(N · P · num_bins)`` time and ``N · P · (num_bins + 1)`` bools of memory, with P the
    number of problems (inside :class:`PerturbedSelector`, P = (M + 1) × batch: e.g. M = 1000,
    64 images, N = 28, 100 bins → ~180 MB); the loop is over the N items only.

    Args:
        scores: ``Tensor[..., N]`` floating, the objective ĉ.
        costs: ``Tensor[N]`` or ``Tensor[..., N]`` (broadcastable to ``scores``), ≥ 0.
        budget: scalar or ``Tensor[...]`` (broadcastable to ``scores.shape[:-1]``), ≥ 0.
        num_bins: budget resolution (≥ 1); the DP table has ``num_bins + 1`` columns.
        validate: check costs/budget (one host sync). :class:`PerturbedSelector` validates once
            at construction and passes False.

    Returns:
        ``Tensor[..., N]`` of ``scores.dtype``, 0/1.
    """
    if int(num_bins) < 1:
        raise ValueError(f'num_bins must be >= 1, got {num_bins}')
    num_bins = int(num_bins)
    costs = torch.as_tensor(costs, device=scores.device)
    budget = torch.as_tensor(budget, device=scores.device)
    if validate:
        _check_costs_budget(costs, budget)
    shape = scores.shape
    n = shape[-1]
    w = discretize_costs(torch.broadcast_to(costs, shape),
                         torch.broadcast_to(budget, shape[:-1]), num_bins)  # [..., N]
    s = scores.reshape(-1, n)  # [P, N]
    w = w.reshape(-1, n)  # [P, N]
    p = s.shape[0]

    cap = torch.arange(num_bins + 1, device=scores.device)  # [C+1]
    value = s.new_zeros(p, num_bins + 1)  # [P, C+1] best value with capacity ≤ c
    take = torch.empty(n, p, num_bins + 1, dtype=torch.bool, device=scores.device)  # [N, P, C+1]
    for i in range(n):
        src = cap.unsqueeze(0) - w[:, i:i + 1]  # [P, C+1] capacity left before taking i
        cand = value.gather(1, src.clamp(min=0)) + s[:, i:i + 1]  # [P, C+1]
        better = (src >= 0) & (cand > value)  # [P, C+1]
        take[i] = better
        value = torch.where(better, cand, value)  # [P, C+1]

    x = s.new_zeros(p, n)  # [P, N]
    c = torch.full((p, 1), num_bins, dtype=torch.long, device=scores.device)  # [P, 1]
    for i in range(n - 1, -1, -1):
        t = take[i].gather(1, c)  # [P, 1]
        x[:, i:i + 1] = t.to(x.dtype)
        c = c - t.long() * w[:, i:i + 1]  # [P, 1]
    return x.reshape(shape)


def _check_costs_budget(costs: Tensor, budget: Tensor) -> None:
    """Raise ``ValueError`` for negative / non-finite costs or budgets (host sync)."""
    if not torch.is_floating_point(costs):
        costs = costs.double()
    if not torch.is_floating_point(budget):
        budget = budget.double()
    if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
        raise ValueError('costs must be finite and >= 0')
    if not bool(torch.isfinite(budget).all()):
        raise ValueError('budget must be finite')
    if bool((budget < 0).any()):
        raise ValueError('budget must be >= 0 (a negative budget is infeasible: costs are >= 0)')


class PerturbedSelector(nn.Module):
    """e2e-CEL selection layer: perturbed top-k or knapsack over scores ĉ (docs/theory.md §5).

    Exactly one of ``k`` (top-k, unit costs) or ``costs`` + ``budget`` (knapsack) is given.
    Defaults are mmens' recommended e2e-CEL settings (docs/experiments.md): M = 1000,
    σ = 0.1, normal noise, the soft forward ``K_σ(ĉ)`` (a hard forward's Monte Carlo gradient
    vanishes once the scores separate by more than σ), raw ĉ (L2 normalisation shrinks the
    warm start's lead so that σ never flips it), a seeded generator and at least one member
    under a budget. The authors' code: ``hard=True, l2_normalize=True, at_least_one=False,
    seed=None``.

    Without gradient (``torch.no_grad()`` or ``scores`` not requiring grad) a hard selector
    skips the sampling and returns the exact solution (inference).

    Args:
        k: number of members to select (top-k), ``1 ≤ k ≤ N`` (checked against N at call time).
        costs: ``Tensor[N]`` member costs (e.g. seconds per image), ≥ 0, for the knapsack.
        budget: knapsack budget B ≥ 0, in the units of ``costs``.
        num_samples: M ≥ 1 perturbations, solved in one batched call.
        sigma: σ > 0.
        noise: ``'normal'`` or ``'gumbel'``.
        hard: hard forward (exact ``K(ĉ)``) if True, else the Monte-Carlo mean ``K_σ(ĉ)``.
        l2_normalize: normalise ĉ to unit L2 norm over the last dim before selecting.
        num_bins: knapsack budget resolution (see :func:`knapsack`).
        seed: if not None, a per-device ``torch.Generator`` seeded with it drives the noise
            (None: torch's global generator).
        solver: knapsack solver, ``'auto'`` (enumeration of the feasible subsets when
            N ≤ 12: exact on the real costs and fast; else the DP), ``'enum'`` or ``'dp'``.
        control_variate: subtract the unperturbed solution in the Monte Carlo gradient
            (unbiased, lower variance; see :mod:`mmens.ops.perturbed`). False: the plain
            estimator.
        at_least_one: knapsack only: never select nobody while a member fits the budget
            (when every affordable score is <= 0 the unconstrained optimum is empty; the
            optimum with the constraint is then the affordable member of highest score).
    """

    def __init__(self,
                 k: Optional[int] = None,
                 costs: Optional[Union[Tensor, Sequence[float]]] = None,
                 budget: Optional[float] = None,
                 num_samples: int = 1000,
                 sigma: float = 0.1,
                 noise: str = 'normal',
                 hard: bool = False,
                 l2_normalize: bool = False,
                 num_bins: int = 100,
                 seed: Optional[int] = 0,
                 solver: str = 'auto',
                 control_variate: bool = True,
                 at_least_one: bool = True) -> None:
        super().__init__()
        if (k is None) == (costs is None):
            raise ValueError('give exactly one of k (top-k) or costs + budget (knapsack)')
        if k is not None and int(k) < 1:
            raise ValueError(f'k must be >= 1, got {k}')
        if costs is not None:
            if budget is None:
                raise ValueError('a knapsack selector needs a budget')
            costs = torch.as_tensor(costs, dtype=torch.float64).flatten()  # [N]
            _check_costs_budget(costs, torch.as_tensor(float(budget)))
        elif budget is not None:
            raise ValueError('budget is only used with costs (knapsack); use k for top-k')
        check_perturbation(num_samples, sigma, noise)
        if int(num_bins) < 1:
            raise ValueError(f'num_bins must be >= 1, got {num_bins}')
        self.k = None if k is None else int(k)
        self.register_buffer('costs', costs, persistent=False)  # [N] or None
        self.budget = None if budget is None else float(budget)
        self.num_samples = int(num_samples)
        self.sigma = float(sigma)
        self.noise = noise
        self.hard = bool(hard)
        self.l2_normalize = bool(l2_normalize)
        self.num_bins = int(num_bins)
        self.seed = seed
        self.control_variate = bool(control_variate)
        self._generators: dict = {}
        if solver not in ('auto', 'enum', 'dp'):
            raise ValueError(f"solver must be 'auto', 'enum' or 'dp', got {solver!r}")
        use_enum = costs is not None and (
            solver == 'enum' or (solver == 'auto' and costs.numel() <= MAX_ITEMS))
        self.solver = 'enum' if use_enum else ('dp' if costs is not None else 'topk')
        self.register_buffer('subsets', feasible_subsets(costs, float(budget)).float()
                             if use_enum else None, persistent=False)  # [S, N]
        self.at_least_one = bool(at_least_one)
        affordable = None  # [N] bool: members that fit the budget alone, as the solver sees it
        if use_enum:
            single = self.subsets[self.subsets.sum(1) == 1]  # [S1, N]
            affordable = single.sum(0) > 0
        elif costs is not None:
            affordable = discretize_costs(costs, torch.as_tensor(float(budget), dtype=costs.dtype),
                                          self.num_bins) <= self.num_bins
        self.register_buffer('affordable', affordable, persistent=False)

    def extra_repr(self) -> str:
        mode = f'k={self.k}' if self.k is not None else \
            f'N={self.costs.numel()}, budget={self.budget}, solver={self.solver}, ' \
            f'num_bins={self.num_bins}'
        return (f'{mode}, num_samples={self.num_samples}, sigma={self.sigma}, '
                f'noise={self.noise!r}, hard={self.hard}, l2_normalize={self.l2_normalize}, '
                f'control_variate={self.control_variate}'
                + (', at_least_one=True' if self.at_least_one else ''))

    def _check_num_members(self, n: int) -> None:
        if self.k is not None and self.k > n:
            raise ValueError(f'k={self.k} > N={n} members')
        if self.k is None and self.costs.numel() != n:
            raise ValueError(f'{self.costs.numel()} costs for N={n} members')

    def solve(self, scores: Tensor) -> Tensor:
        """Exact, unperturbed ``K(ĉ)``: ``Tensor[..., N]`` → 0/1 ``Tensor[..., N]``."""
        self._check_num_members(scores.shape[-1])
        if self.k is not None:
            return topk_mask(scores, self.k)
        if self.subsets is not None:
            x = knapsack_exhaustive(scores, self.subsets)
        else:
            x = knapsack(scores, self.costs, self.budget, self.num_bins, validate=False)
        if not self.at_least_one:
            return x
        best = scores.masked_fill(~self.affordable, float('-inf')).argmax(-1)  # [...]
        one = torch.nn.functional.one_hot(best, x.shape[-1]).to(x.dtype)  # [..., N]
        fill = (x.sum(-1, keepdim=True) == 0) & self.affordable.any()  # [..., 1]
        return torch.where(fill, one, x)

    def exact(self, scores: Tensor) -> Tensor:
        """The hard selection of raw scores ĉ (``l2_normalize`` applied, then
        :meth:`solve`): what :meth:`forward` returns at inference, without autograd."""
        if self.l2_normalize:
            scores = F.normalize(scores, p=2.0, dim=-1)  # [..., N]
        return self.solve(scores)

    def generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def forward(self, scores: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Select members.

        Args:
            scores: ``Tensor[..., N]`` floating, ĉ = g_φ(z) for each input.
            generator: overrides the ``seed`` generator for this call.

        Returns:
            ``Tensor[..., N]`` selection (hard: 0/1, soft: in [0, 1]), ``scores.dtype``.
        """
        if not torch.is_floating_point(scores):
            raise ValueError(f'scores must be floating point, got {scores.dtype}')
        if self.l2_normalize:
            scores = F.normalize(scores, p=2.0, dim=-1)  # [..., N]
        if self.hard and not (torch.is_grad_enabled() and scores.requires_grad):
            return self.solve(scores)  # [..., N]
        self._check_num_members(scores.shape[-1])
        gen = generator if generator is not None else self.generator(scores.device)
        return perturbed_select(scores, self.solve, self.num_samples, self.sigma, self.noise,
                                self.hard, gen, self.control_variate)
