"""mmens.testing.synthetic_batch: a seeded load, whatever the global RNG does."""
import torch

from mmens.testing import synthetic_batch


def _load(seed):
    return synthetic_batch(20, 3, boxes_per_member=30, num_classes=10, seed=seed)


def test_the_seed_alone_decides_the_load():
    torch.manual_seed(1)
    a_packed, a_gt = _load(seed=5)
    torch.manual_seed(2)
    torch.rand(100)  # the global RNG moved on
    b_packed, b_gt = _load(seed=5)
    for key in a_packed:
        assert torch.equal(a_packed[key], b_packed[key]), key
    for key in a_gt:
        assert torch.equal(a_gt[key], b_gt[key]), key
    c_packed, _ = _load(seed=6)
    assert not torch.equal(a_packed['scores'], c_packed['scores'])


def test_a_load_does_not_move_the_global_rng():
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    _load(seed=0)
    assert torch.equal(torch.rand(4), want)


def test_object_scores_follow_beta_5_2():
    packed, _ = synthetic_batch(200, 5, boxes_per_member=100, seed=0)
    high = packed['scores'][packed['scores'] > 0.2]  # background scores are below 0.2
    # Beta(5, 2): mean 5/7, variance 10/392; its mass below 0.2 (0.0016) hardly matters
    assert abs(float(high.mean()) - 5 / 7) < 0.01
    assert abs(float(high.var()) - 10 / 392) < 0.003
    assert float(packed['scores'].max()) <= 1.0 and float(packed['scores'].min()) >= 0.0
