"""Exact 0/1 knapsack by enumeration of all subsets: for the few members of an ensemble.

With N ≤ ~12 items and one cost vector shared by all problems (each member's seconds per
image), the feasible subsets are enumerated once and every problem is one matrix product
``[P, N] × [N, S]`` and an argmax: exact on the real (not discretised) costs, and much faster
than the dynamic programme of :func:`mmens.ops.knapsack.knapsack` for the ``(M + 1) × batch``
problems of the perturbed layer. Pure torch, device-agnostic, no host sync per call.
"""
from typing import Sequence, Union

import torch
from torch import Tensor

#: Largest N enumerated (2^N subsets).
MAX_ITEMS = 12


def feasible_subsets(costs: Union[Tensor, Sequence[float]], budget: float,
                     tol: float = 1e-9) -> Tensor:
    """All subsets of N items whose summed cost is ``<= budget``, as 0/1 rows.

    Rows are ordered by number of items, then by bitmask, so that among equal objective
    values the argmax picks the subset with fewest items (an item with ĉ ≤ 0 is not taken).

    Args:
        costs: ``Tensor[N]`` non-negative. budget: B ≥ 0.

    Returns:
        ``Tensor[S, N]`` float64 (the empty subset is always first).
    """
    costs = torch.as_tensor(costs, dtype=torch.float64).flatten()  # [N]
    n = costs.numel()
    if n > MAX_ITEMS:
        raise ValueError(f'feasible_subsets: {n} items is too many to enumerate '
                         f'(at most {MAX_ITEMS}); use the DP knapsack')
    bits = torch.arange(2 ** n)
    subsets = ((bits[:, None] >> torch.arange(n)) & 1).to(torch.float64)  # [2^N, N]
    order = torch.argsort(subsets.sum(1) * 2 ** n + bits, stable=True)
    subsets = subsets[order]
    ok = subsets @ costs.to(subsets.device) <= budget + tol  # [2^N]
    return subsets[ok]


def knapsack_exhaustive(scores: Tensor, subsets: Tensor) -> Tensor:
    """``argmax_x ĉᵀx`` over the given feasible subsets, batched.

    Args:
        scores: ``Tensor[..., N]`` floating, the objective ĉ.
        subsets: ``Tensor[S, N]`` 0/1 rows from :func:`feasible_subsets`.

    Returns:
        ``Tensor[..., N]`` of ``scores.dtype``, 0/1.
    """
    sub = subsets.to(device=scores.device, dtype=scores.dtype)  # [S, N]
    best = (scores @ sub.T).argmax(-1)  # [...], first maximum: fewest items on ties
    return sub[best]  # [..., N]
