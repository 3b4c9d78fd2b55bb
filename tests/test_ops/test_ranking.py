"""pairwise_rank_loss: a ranking surrogate of AP, per class, across images."""
import torch

from mmens.ops.ranking import pairwise_rank_loss


def test_rank_loss_orders_positives_above_negatives_of_their_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    y = (torch.rand(400, generator=g) < 0.3).float()
    keep = torch.ones(400, dtype=torch.bool)
    good = torch.where(y > 0, 0.8, 0.2)
    bad = torch.where(y > 0, 0.2, 0.8)
    lg = pairwise_rank_loss(good, y, labels, keep, generator=g)
    lb = pairwise_rank_loss(bad, y, labels, keep, generator=g)
    assert lg < 1e-3 and lb > 10.0
    # only the order within a class matters: a class-wise shift changes nothing
    shifted = good + 0.0 * labels
    assert torch.allclose(pairwise_rank_loss(shifted, y, labels, keep,
                                             generator=torch.Generator().manual_seed(1)),
                          lg, atol=1e-3)
    # gradient: raise positives, lower negatives
    s = torch.full((400,), 0.5, requires_grad=True)
    pairwise_rank_loss(s, y, labels, keep, generator=g).backward()
    assert (s.grad[y > 0] <= 0).all() and (s.grad[y == 0] >= 0).all()
    assert s.grad[y > 0].sum() < 0


def test_rank_loss_edge_cases():
    s = torch.rand(6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    keep = torch.ones(6, dtype=torch.bool)
    assert pairwise_rank_loss(s, torch.ones(6), labels, keep) == 0  # no negatives
    assert pairwise_rank_loss(s, torch.zeros(6), labels, keep) == 0  # no positives
    y = torch.tensor([1., 0, 1, 1, 0, 0])  # class 1 has no negative, class 2 no positive
    loss = pairwise_rank_loss(s, y, labels, keep)
    assert torch.isfinite(loss)
    assert pairwise_rank_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0).long(),
                              torch.zeros(0, dtype=torch.bool)) == 0


def test_class_balanced_rank_loss_weighs_each_class_the_same():
    # class 0: 9 positives ranked right; class 1: 1 positive ranked wrong
    labels = torch.tensor([0] * 18 + [1] * 2)
    y = torch.tensor([1.] * 9 + [0.] * 9 + [1., 0.])
    s = torch.tensor([0.9] * 9 + [0.1] * 9 + [0.1, 0.9])
    keep = torch.ones(20, dtype=torch.bool)
    per_class = torch.nn.functional.softplus(torch.tensor([-0.8, 0.8]) / 0.05)  # [2]
    plain = pairwise_rank_loss(s, y, labels, keep)
    balanced = pairwise_rank_loss(s, y, labels, keep, class_balanced=True)
    # every sampled negative of a class has the same score here, so both are exact
    assert torch.allclose(plain, (9 * per_class[0] + per_class[1]) / 10)
    assert torch.allclose(balanced, per_class.mean())
    # one class only: the two weightings agree
    one = labels == 0
    assert torch.allclose(pairwise_rank_loss(s[one], y[one], labels[one], keep[one]),
                          pairwise_rank_loss(s[one], y[one], labels[one], keep[one],
                                             class_balanced=True))
