"""perturbed_loss_grad: the per-image gradient of the expected loss of perturbed selections."""
import pytest
import torch

from mmens.ops.knapsack import topk_mask
from mmens.ops.perturbed_loss import perturbed_loss_grad, perturbed_loss_surrogate


def table_deltas(table):
    """Loss deltas of a per-image loss given as a table ``[B, N]`` of the loss of picking
    member i alone (top-1): image b moving from ``base`` to candidate u."""
    def deltas(base, cand):  # [B, N], [U, N]
        return cand @ table.T - (base * table).sum(1)[None]  # [U, B]
    return deltas


def test_top1_gumbel_matches_the_closed_form_gradient():
    # top-1 under Gumbel noise: P(pick i) = softmax(c / σ), so E[L] = softmax(c / σ) · L
    c = torch.tensor([[0.3, 0.1, -0.2, 0.0], [0.0, 0.2, 0.25, -0.1]], dtype=torch.float64)
    table = torch.tensor([[1.0, 3.0, -2.0, 0.5], [0.0, -1.0, 2.0, 1.0]], dtype=torch.float64)
    sigma = 0.5
    cc = c.clone().requires_grad_(True)
    (torch.softmax(cc / sigma, -1) * table).sum().backward()
    g = torch.Generator().manual_seed(0)
    grad, base, expected = perturbed_loss_grad(c, lambda s: topk_mask(s, 1), table_deltas(table),
                                               num_samples=200_000, sigma=sigma, noise='gumbel',
                                               generator=g)
    assert torch.equal(base, topk_mask(c, 1).double())
    assert torch.allclose(grad, cc.grad, atol=0.03), (grad, cc.grad)
    exact = (torch.softmax(c / sigma, -1) * table).sum(1) - (base * table).sum(1)
    assert torch.allclose(expected, exact, atol=0.02)
    # the sign is the descent direction's: more weight on the lowest-loss member
    assert grad[0].argmin() == 2 and grad[1].argmin() == 1


def test_no_gradient_where_no_perturbation_changes_the_selection():
    c = torch.tensor([[5.0, 0.0, 0.0]])
    grad, _, expected = perturbed_loss_grad(c, lambda s: topk_mask(s, 1),
                                            table_deltas(torch.tensor([[1.0, 2.0, 3.0]])),
                                            num_samples=500, sigma=0.1)
    assert torch.equal(grad, torch.zeros_like(c)) and torch.equal(expected, torch.zeros(1))


def test_each_image_sees_only_its_own_loss_change():
    # image 1 is indifferent (all members cost the same); image 0 is not. Image 1's
    # gradient must be exactly 0 although image 0's selection changes in the same samples.
    table = torch.tensor([[0.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    c = torch.zeros(2, 3)
    grad, _, _ = perturbed_loss_grad(c, lambda s: topk_mask(s, 1), table_deltas(table),
                                     num_samples=1000, sigma=1.0,
                                     generator=torch.Generator().manual_seed(0))
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1], torch.zeros(3))


def test_surrogate_and_bad_input():
    s = torch.randn(2, 3, requires_grad=True)
    g = torch.randn(2, 3)
    out = perturbed_loss_surrogate(s, g)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(s.grad, g)
    with pytest.raises(ValueError, match=r'\[B, N\]'):
        perturbed_loss_grad(torch.zeros(3), lambda s: s, lambda b, c: None)
    with pytest.raises(ValueError, match='at most 62 members'):
        perturbed_loss_grad(torch.zeros(1, 63), lambda s: s, lambda b, c: None)
