"""e2e-CEL's warm start: the best fixed subset of the training images, by COCO AP.

The selection net learns per-image departures from one fixed subset. Started anywhere
else, its training loss (a surrogate of AP) walks to the subsets *it* prefers, which at
k = 2, 3 and 4 are not the ones AP prefers (docs/experiments.md, loss against AP). So,
before the first step, :class:`CELDetector` fuses every feasible fixed subset on its
training images, scores each with its ``subset_evaluator`` (COCO AP against their ground
truth: :class:`mmens.engine.CELWarmStartHook` injects it, so that models need not import
the evaluation layer), and starts ĉ at ``+gap/2`` for the members of the best and
``-gap/2`` for the others: the exact top-k or knapsack on that start is that subset
(with positive scores for all, a knapsack would add every other member that still fits).
"""
import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: ``(model, batch_inputs, samples, subsets) -> [AP of each subset]``: scores the WBF of
#: each fixed subset of members on a batch against the samples' ground truth
SubsetEvaluator = Callable[..., List[float]]


def feasible_fixed_subsets(num_members: int, k: Optional[int] = None,
                           costs: Optional[Sequence[float]] = None,
                           budget: Optional[float] = None) -> List[Tuple[int, ...]]:
    """Every non-empty subset of ``range(num_members)`` with exactly ``k`` members, or
    whose ``costs`` sum to at most ``budget``; by size, then lexicographically (the order
    in which ties are broken: the first best wins)."""
    if (k is None) == (budget is None):
        raise ValueError('feasible_fixed_subsets: give exactly one of k or costs + budget')
    subsets = [s for r in range(1, num_members + 1)
               for s in itertools.combinations(range(num_members), r)]
    if k is not None:
        return [s for s in subsets if len(s) == k]
    c = np.asarray(costs, dtype=np.float64)
    return [s for s in subsets if float(c[list(s)].sum()) <= budget + 1e-9]


def warm_start_scores(subset: Sequence[int], num_members: int,
                      gap: float = 0.25) -> List[float]:
    """ĉ ``[N]``: ``+gap/2`` for the members of ``subset``, ``-gap/2`` for the others."""
    return [gap / 2 if i in subset else -gap / 2 for i in range(num_members)]


def best_fixed_subset(model, batch_inputs: dict, samples: Sequence,
                      evaluator: SubsetEvaluator) -> Tuple[Tuple[int, ...], float]:
    """The feasible fixed subset of ``model``'s selector (k members, or within its time
    budget) with the highest AP by ``evaluator`` on the batch, and that AP (ties: the
    first)."""
    sel = model.selector  # under a budget: the probes cost 0, the budget is what is left
    subsets = feasible_fixed_subsets(
        model.num_members, k=sel.k,
        costs=None if sel.k is not None else sel.costs.tolist(),
        budget=sel.budget)
    if not subsets:
        raise ValueError(f'CELDetector: no subset of the {model.num_members} members fits '
                         f'the budget {sel.budget}')
    aps = evaluator(model, batch_inputs, samples, subsets)
    best = int(np.argmax(aps))  # the first maximum
    return subsets[best], float(aps[best])


def broadcast_subset(subset: Tuple[int, ...], num_members: int,
                     device: torch.device) -> Tuple[int, ...]:
    """Rank 0's subset on every process (each process sees only its shard of the
    training images, and all must start from the same ĉ)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return subset
    mask = torch.zeros(num_members, device=device)
    mask[list(subset)] = 1.0
    dist.broadcast(mask, 0)
    return tuple(int(i) for i in mask.nonzero().flatten().tolist())
