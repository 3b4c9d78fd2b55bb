"""LearnedWeightsHead: the learned WBF weights favour the informative member."""
import pytest
import torch

from mmens.models.heads import LearnedWeightsHead
from mmens.ops.clustering import Clusters
from mmens.ops.targets import TargetAssignment


def make_clusters(c=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(c, generator=g) < 0.4).float()
    good = torch.where(y > 0, 0.6 + 0.3 * torch.rand(c, generator=g),
                       0.1 + 0.3 * torch.rand(c, generator=g))  # separates y
    noise = torch.rand(c, generator=g)  # says nothing about y
    y_hat = torch.zeros(c, 2, 5)
    y_hat[:, :, 2:4] = 1.0
    y_hat[:, 0, 4], y_hat[:, 1, 4] = good, noise
    mask = torch.ones(c, 2, dtype=torch.bool)
    clusters = Clusters(y_hat, mask, torch.zeros(c, dtype=torch.long),
                        torch.zeros(c, dtype=torch.long), y_hat[:, 0, :4], good,
                        torch.ones(c, 2, dtype=torch.long), torch.arange(c))
    targets = TargetAssignment(y, torch.zeros(c, 4), torch.zeros(c, dtype=torch.long),
                               y, y, torch.zeros(c, dtype=torch.bool))
    return clusters, targets


def fit(head, clusters, targets):
    opt = torch.optim.LBFGS(head.parameters(), max_iter=100, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = head.loss_by_feat(clusters, targets)['loss_cls']
        loss.backward()
        return loss
    opt.step(closure)


def test_informative_member_gets_the_larger_weight():
    head = LearnedWeightsHead(num_members=2)
    clusters, targets = make_clusters()
    fit(head, clusters, targets)
    head.eval()
    w = head.member_weights()
    assert w[0] > 3 * w[1]
    assert torch.allclose(head.matching_weights(), w)
    head.train()
    assert torch.equal(head.matching_weights(), torch.ones(2))  # fixed clusters in training


def test_member_weights_are_theta_over_its_mean():
    head = LearnedWeightsHead(num_members=3)
    with torch.no_grad():
        head.phi.copy_(torch.tensor([1.0, 3.0, -1.0]))
    theta = torch.nn.functional.softplus(head.phi.detach())
    assert torch.allclose(head.member_weights(), theta / theta.mean())


def test_empty_and_all_ignored_are_finite():
    head = LearnedWeightsHead(num_members=3)
    clusters, targets = make_clusters(c=0)
    clusters = clusters._replace(y_hat=torch.zeros(0, 3, 5), mask=torch.zeros(0, 3).bool(),
                                 counts=torch.zeros(0, 3).long())
    loss = head.loss_by_feat(clusters, targets)['loss_cls']
    assert torch.isfinite(loss) and loss == 0
    clusters, targets = make_clusters(c=5)
    targets = targets._replace(ignored=torch.ones(5, dtype=torch.bool))
    assert LearnedWeightsHead(num_members=2).loss_by_feat(clusters, targets)['loss_cls'] == 0


def test_fit_clusters_lowers_the_loss():
    clusters, targets = make_clusters()
    head = LearnedWeightsHead(num_members=2, max_iter=30)
    before = head.loss_by_feat(clusters, targets)['loss_cls'].item()
    head.fit_clusters(clusters, targets)
    assert head.loss_by_feat(clusters, targets)['loss_cls'].item() < before - 0.05


def test_a_checkpoint_with_the_deleted_calibration_is_refused_in_one_line():
    head = LearnedWeightsHead(num_members=2)
    state = {'head.phi': torch.tensor([0.5, -0.5]), 'head.bias': torch.zeros(1),
             'head.cal_log_slope': torch.zeros(2), 'head.cal_shift': torch.zeros(2)}
    model = torch.nn.Module()
    model.head = head
    with pytest.raises(ValueError, match=r"carries \['head.cal_log_slope', 'head.cal_shift'\]"):
        model.load_state_dict(state, strict=False)  # mmengine's load_checkpoint: not strict
    assert torch.equal(head.phi.detach(), torch.zeros(2))  # nothing was loaded
    del state['head.cal_log_slope'], state['head.cal_shift']
    model.load_state_dict(state)
    assert torch.equal(head.phi.detach(), torch.tensor([0.5, -0.5]))
    with pytest.raises(TypeError, match='calibration'):  # the argument is gone too
        LearnedWeightsHead(num_members=2, calibration='platt')
