"""Tests for mmens.ops.knapsack / mmens.ops.perturbed (exact solvers + perturbed layer)."""
import itertools
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from mmens.ops.knapsack import PerturbedSelector, discretize_costs, knapsack, topk_mask
from mmens.ops.perturbed import perturbed_select, sample_noise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _subsets(n: int) -> torch.Tensor:
    """All 2^n subsets as 0/1 rows: Tensor[2^n, n] (float64)."""
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def _brute_force(scores, costs, budget):
    """Optimal value of max sᵀx s.t. wᵀx ≤ B per problem: scores/costs [P, N], budget [P]."""
    xs = _subsets(scores.shape[-1])  # [S, N]
    val = scores @ xs.T  # [P, S]
    feasible = (costs @ xs.T) <= budget[:, None] + 1e-9  # [P, S]
    return val.masked_fill(~feasible, -math.inf).max(dim=1).values  # [P]


# ----------------------------------------------------------------------------- exact solvers
def test_topk_matches_brute_force():
    scores = torch.randn(4, 5, 6, generator=_gen(0), dtype=torch.float64)  # [4, 5, 6]
    xs = _subsets(6)  # [64, 6]
    for k in range(7):
        mask = topk_mask(scores, k)  # [4, 5, 6]
        assert mask.shape == scores.shape and mask.dtype == scores.dtype
        assert torch.all(mask.sum(-1) == k)
        cand = xs[xs.sum(-1) == k]  # [C, 6]
        best = cand[(scores @ cand.T).argmax(-1)]  # [4, 5, 6], unique: continuous scores
        assert torch.equal(mask, best)


def test_knapsack_matches_brute_force_integer_costs():
    g = _gen(1)
    p, n, num_bins = 64, 7, 60
    scores = torch.randn(p, n, generator=g, dtype=torch.float64)  # [P, N], some negative
    costs = torch.randint(0, 7, (p, n), generator=g).double()  # [P, N], zeros included
    divisors = torch.tensor([0., 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60], dtype=torch.float64)
    budget = divisors[torch.randint(0, len(divisors), (p, ), generator=g)]  # [P] divides 60
    x = knapsack(scores.view(8, 8, n), costs.view(8, 8, n), budget.view(8, 8), num_bins)
    x = x.view(p, n)  # [P, N]
    assert torch.all((x == 0) | (x == 1))
    assert torch.all((x * costs).sum(-1) <= budget)
    assert torch.allclose((x * scores).sum(-1), _brute_force(scores, costs, budget))
    assert torch.all(x[scores <= 0] == 0)


def test_knapsack_real_costs_sandwich():
    """Real costs: feasible, optimal for the rounded-up costs, and within one bin per item."""
    g = _gen(2)
    p, n, num_bins = 48, 6, 50
    scores = torch.randn(p, n, generator=g, dtype=torch.float64)  # [P, N]
    costs = torch.rand(n, generator=g, dtype=torch.float64)  # [N] shared
    budget = 0.2 + 2 * torch.rand(p, generator=g, dtype=torch.float64)  # [P]
    x = knapsack(scores, costs, budget, num_bins)  # [P, N]
    value = (x * scores).sum(-1)  # [P]
    assert torch.all((x * costs).sum(-1) <= budget + 1e-9)
    w_int = discretize_costs(costs.expand(p, n), budget, num_bins).double()  # [P, N]
    assert torch.allclose(value, _brute_force(scores, w_int, torch.full((p, ), num_bins * 1.)))
    upper = _brute_force(scores, costs.expand(p, n), budget)  # [P]
    lower = _brute_force(scores, costs.expand(p, n), budget * (1 - n / num_bins))  # [P]
    assert torch.all(value <= upper + 1e-12) and torch.all(value >= lower - 1e-12)


def test_knapsack_edge_cases():
    scores = torch.tensor([[-1., 0., 2., 3.], [1., 1., 1., 1.]])  # [2, 4]
    costs = torch.tensor([0., 0., 0., 5.])  # [4]
    # zero budget: only free items with positive score; item 3 costs more than B
    x = knapsack(scores, costs, 0.0)
    assert x.tolist() == [[0, 0, 1, 0], [1, 1, 1, 0]]
    assert knapsack(-scores.abs(), costs, 10.0).sum() == 0  # nothing worth taking
    # unit costs with B = k equal top-k when all scores are positive
    s = torch.rand(10, 8, generator=_gen(3)) + 0.1  # [10, 8]
    assert torch.equal(knapsack(s, torch.ones(8), 3.0, num_bins=3), topk_mask(s, 3))
    # float error in costs that are exact multiples of the resolution: 3 × 0.1 fits in 0.3
    assert knapsack(torch.ones(3), torch.full((3, ), 0.1), 0.3, num_bins=3).tolist() == [1, 1, 1]
    assert knapsack(torch.ones(0, 3), torch.ones(3), 1.0).shape == (0, 3)  # empty batch


def test_bad_arguments():
    s = torch.randn(2, 4)
    for bad in (lambda: topk_mask(s, 5), lambda: topk_mask(s, -1),
                lambda: knapsack(s, -torch.ones(4), 1.0), lambda: knapsack(s, torch.ones(4), -1.),
                lambda: knapsack(s, torch.ones(4), 1.0, num_bins=0),
                lambda: PerturbedSelector(k=5)(s.requires_grad_()),
                lambda: PerturbedSelector(k=0), lambda: PerturbedSelector(),
                lambda: PerturbedSelector(k=2, costs=[1., 1.], budget=1.),
                lambda: PerturbedSelector(costs=[1., 1.]),
                lambda: PerturbedSelector(k=2, budget=1.),
                lambda: PerturbedSelector(k=2, sigma=0.), lambda: PerturbedSelector(k=2, noise='x'),
                lambda: PerturbedSelector(k=2, num_samples=0),
                lambda: PerturbedSelector(costs=[1., -1.], budget=1.),
                lambda: PerturbedSelector(costs=[1., 1., 1.], budget=1.)(s),
                lambda: PerturbedSelector(k=2)(torch.ones(2, 4, dtype=torch.long)),
                lambda: perturbed_select(s, lambda c: topk_mask(c, 1), sigma=-1.),
                lambda: sample_noise((2, ), 'laplace')):
        with pytest.raises(ValueError):
            bad()


# ----------------------------------------------------------------------------- perturbed layer
@pytest.mark.parametrize('kw', [dict(k=3), dict(costs=[1., 2., 0.5, 1., 3., 1.], budget=3.),
                                dict(costs=[1., 2., 0.5, 1., 3., 1.], budget=3., solver='dp')])
def test_hard_forward_equals_exact(kw):
    scores = torch.randn(4, 6, generator=_gen(4), requires_grad=True)  # [4, 6]
    sel = PerturbedSelector(**kw, num_samples=16, seed=0, hard=True, l2_normalize=True)
    expected = sel.solve(F.normalize(scores.detach(), dim=-1))  # [4, 6]
    assert torch.equal(sel(scores), expected)
    with torch.no_grad():
        assert torch.equal(sel(scores), expected)
    normed = F.normalize(scores.detach(), dim=-1).double()
    if kw.get('solver') == 'dp':  # the DP on costs rounded up to B/100
        assert torch.equal(expected, knapsack(normed.float(), torch.tensor(kw['costs']), 3.0))
    elif 'costs' in kw:  # enumeration: optimal on the real costs
        costs = torch.tensor(kw['costs'], dtype=torch.float64)
        assert torch.allclose((expected.double() * normed).sum(-1), _brute_force(
            normed, costs.expand(4, 6), torch.full((4,), 3.0, dtype=torch.float64)))


def test_gumbel_top1_mean_is_softmax():
    """Top-1 under Gumbel noise: K_σ(c) = softmax(c / σ) exactly."""
    sigma, m = 0.5, 20000
    c = torch.randn(3, 5, generator=_gen(5), dtype=torch.float64)  # [3, 5]
    y = perturbed_select(c, lambda s: topk_mask(s, 1), m, sigma, 'gumbel', hard=False,
                         generator=_gen(6))  # [3, 5]
    p = torch.softmax(c / sigma, dim=-1)  # [3, 5]
    se = (p * (1 - p) / m).sqrt()  # [3, 5]
    assert torch.all((y - p).abs() <= 5 * se + 1e-12)


def test_gumbel_top1_gradient_is_softmax_jacobian():
    """VJP of the estimator vs (1/σ)(diag p − ppᵀ)v; per-sample std ≤ max|v|/σ (E[h(Z)²] = 1)."""
    sigma, m = 0.5, 40000
    c = torch.randn(2, 5, generator=_gen(7), dtype=torch.float64, requires_grad=True)  # [2, 5]
    v = torch.rand(2, 5, generator=_gen(8), dtype=torch.float64) * 2 - 1  # [2, 5]
    y = perturbed_select(c, lambda s: topk_mask(s, 1), m, sigma, 'gumbel', hard=True,
                         generator=_gen(9))
    (grad, ) = torch.autograd.grad((y * v).sum(), c)  # [2, 5]
    p = torch.softmax(c.detach() / sigma, dim=-1)  # [2, 5]
    expected = (p * v - p * (p * v).sum(-1, keepdim=True)) / sigma  # [2, 5]
    tol = 4 * v.abs().max() / (sigma * math.sqrt(m))
    assert torch.all((grad - expected).abs() <= tol), (grad, expected)
    assert expected.abs().max() > 5 * tol  # the test can see a sign error


@pytest.mark.parametrize('control_variate', [True, False])
@pytest.mark.parametrize('solver', [
    lambda s: topk_mask(s, 2),
    lambda s: knapsack(s, torch.tensor([1., 2., 1., 3., 2.]), 4.0, num_bins=4, validate=False),
])
def test_normal_gradient_matches_finite_difference(solver, control_variate):
    """Estimator VJP vs central finite differences of K_σ with common random numbers."""
    sigma, m, h, n = 0.5, 100000, 0.05, 5
    c = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.4], dtype=torch.float64)  # [N]
    v = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.7], dtype=torch.float64)  # [N]
    z, _ = sample_noise((m, 1, n), 'normal', _gen(10), torch.float64)  # [M, 1, N]
    shifts = h * torch.eye(n, dtype=torch.float64)  # [N, N]
    k_plus = solver(c + shifts + sigma * z).mean(0)  # [N (shift j), N]
    k_minus = solver(c - shifts + sigma * z).mean(0)  # [N, N]
    fd = ((k_plus - k_minus) @ v) / (2 * h)  # [N] d(vᵀK_σ)/dc_j
    cg = c.clone().requires_grad_()
    y = perturbed_select(cg, solver, m, sigma, 'normal', hard=True, generator=_gen(11),
                         control_variate=control_variate)
    (grad, ) = torch.autograd.grad((y * v).sum(), cg)  # [N]
    assert torch.allclose(grad, fd, atol=0.05), (grad, fd)
    assert fd.abs().max() > 0.2


@pytest.mark.parametrize('noise', ['normal', 'gumbel'])
@pytest.mark.parametrize('hard', [True, False])
def test_control_variate_is_zero_where_no_perturbation_changes_the_solution(noise, hard):
    """Scores far apart relative to σ: every perturbed solution is K(c), so K_σ is flat and
    the control-variate estimate is exactly 0, while the plain one is noise of size
    |gᵀK(c)| / (σ√M)."""
    c = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([[1.0, 0.5, -0.3, 0.2]], dtype=torch.float64)
    solver = lambda s: topk_mask(s, 2)  # noqa: E731
    grads = {}
    for cv in (True, False):
        y = perturbed_select(c, solver, 200, 0.01, noise, hard=hard, generator=_gen(13),
                             control_variate=cv)
        assert torch.equal(y.detach(), solver(c.detach()).double())
        grads[cv] = torch.autograd.grad((y * v).sum(), c)[0]
    assert torch.equal(grads[True], torch.zeros_like(c))
    assert grads[False].abs().max() > 1.0  # 1.5 * |mean ∇h| / 0.01 for 200 samples


def test_gradients_flow_batched_and_seeded():
    net = torch.nn.Linear(8, 6)
    feats = torch.randn(2, 3, 8, generator=_gen(12))  # [2, 3, 8]
    grads = []
    for _ in range(2):
        net.zero_grad()
        sel = PerturbedSelector(k=2, num_samples=64, seed=123, hard=True)
        x = sel(net(feats))  # [2, 3, 6]
        assert x.shape == (2, 3, 6) and torch.all(x.sum(-1) == 2)
        (x * torch.arange(6.)).sum().backward()
        assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
        assert net.weight.grad.abs().sum() > 0
        grads.append(net.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])  # same seed → same noise → same gradient
    # batched call = per-slice calls (hard forward)
    scores = net(feats).detach().requires_grad_()  # [2, 3, 6]
    sel = PerturbedSelector(costs=torch.rand(6, generator=_gen(13)), budget=1.0, num_samples=8,
                            hard=True)
    full = sel(scores)
    for i in range(2):
        assert torch.equal(full[i], sel(scores[i]))


@contextmanager
def _forbid_host_sync():
    """Make tensor → Python conversions (item/bool/int/float/tolist/numpy) raise."""
    names = ('item', '__bool__', '__int__', '__float__', 'tolist', 'numpy')
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(*args, **kwargs):
        raise RuntimeError('host sync')

    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize('kw', [dict(k=2), dict(costs=[1., 2., 1., 3., 2.], budget=4.)])
@pytest.mark.parametrize('noise', ['normal', 'gumbel'])
@pytest.mark.parametrize('hard', [True, False])
def test_no_host_sync(kw, noise, hard):
    sel = PerturbedSelector(**kw, num_samples=32, noise=noise, hard=hard, seed=0)
    scores = torch.randn(3, 5, requires_grad=True)  # [3, 5]
    with _forbid_host_sync():
        x = sel(scores)
        (x * torch.linspace(-1, 1, 5)).sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_no_sync():
    sel = PerturbedSelector(costs=[1., 2., 1., 3., 2.], budget=4., num_samples=64, seed=0).cuda()
    scores = torch.randn(3, 5, device='cuda', requires_grad=True)
    torch.cuda.set_sync_debug_mode('error')
    try:
        x = sel(scores)
        (x * torch.linspace(-1, 1, 5, device='cuda')).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert x.device.type == 'cuda' and scores.grad.device.type == 'cuda'


def test_exhaustive_knapsack_is_exact_on_real_costs_and_agrees_with_the_dp():
    from mmens.ops.knapsack_enum import feasible_subsets, knapsack_exhaustive
    g = _gen(7)
    n = 6
    costs = torch.rand(n, generator=g, dtype=torch.float64) * 0.3  # real costs
    scores = torch.randn(200, n, generator=g, dtype=torch.float64)
    for budget in (0.0, 0.2, 0.45, 2.0):
        subsets = feasible_subsets(costs, budget)
        x = knapsack_exhaustive(scores, subsets)
        assert torch.all((x * costs).sum(-1) <= budget + 1e-9)
        assert torch.allclose((x * scores).sum(-1),
                              _brute_force(scores, costs.expand(200, n),
                                           torch.full((200,), budget, dtype=torch.float64)))
        assert torch.all(x[scores <= 0] == 0)
    # integer costs: the DP is exact too, and both give the same optimum value
    icosts = torch.tensor([1., 2., 1., 3., 2., 1.], dtype=torch.float64)
    enum = PerturbedSelector(costs=icosts, budget=4.0, l2_normalize=False, solver='enum')
    dp = PerturbedSelector(costs=icosts, budget=4.0, l2_normalize=False, num_bins=4,
                           solver='dp')
    assert enum.solver == 'enum' and dp.solver == 'dp'
    assert torch.allclose((enum.solve(scores) * scores).sum(-1),
                          (dp.solve(scores) * scores).sum(-1))
    with pytest.raises(ValueError, match='too many to enumerate'):
        feasible_subsets(torch.ones(13), 1.0)


@pytest.mark.parametrize('solver', ['enum', 'dp'])
def test_at_least_one_is_the_best_nonempty_feasible_subset(solver):
    icosts = torch.tensor([1., 2., 1., 3., 5., 1.], dtype=torch.float64)  # member 4 never fits
    scores = torch.randn(300, 6, generator=_gen(8), dtype=torch.float64)
    scores[:100] = -scores[:100].abs()  # all negative: the plain optimum is nobody
    sel = PerturbedSelector(costs=icosts, budget=4.0, l2_normalize=False, num_bins=4,
                            solver=solver, at_least_one=True)
    plain = PerturbedSelector(costs=icosts, budget=4.0, l2_normalize=False, num_bins=4,
                              solver=solver, at_least_one=False)
    x = sel.solve(scores)  # [300, 6]
    xs = _subsets(6)[1:]  # [63, 6] non-empty
    ok = (xs @ icosts) <= 4.0  # [63]
    best = (scores @ xs[ok].T).max(-1).values  # [300]
    assert torch.all(x.sum(-1) >= 1) and torch.all((x * icosts).sum(-1) <= 4.0)
    assert torch.allclose((x * scores).sum(-1), best)
    assert torch.all(x[:, 4] == 0)
    assert torch.all(plain.solve(scores[:100]).sum(-1) == 0)
    nonempty = plain.solve(scores).sum(-1) > 0
    assert torch.equal(x[nonempty], plain.solve(scores)[nonempty])  # unchanged otherwise
    # the perturbed layer solves with it too; a budget nothing fits still selects nobody
    soft = PerturbedSelector(costs=icosts, budget=4.0, l2_normalize=False, num_bins=4,
                             solver=solver, at_least_one=True, hard=False, num_samples=50,
                             seed=0)
    assert torch.all(soft(scores[:100].float().requires_grad_()).sum(-1) > 0.999)
    none_fit = PerturbedSelector(costs=icosts, budget=0.5, l2_normalize=False,
                                 solver=solver, at_least_one=True)
    assert torch.all(none_fit.solve(scores).sum(-1) == 0)
