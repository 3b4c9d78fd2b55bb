"""LearnedFusionHead with Θ on the WBF form (theta_mode='wbf')."""
import pytest
import torch

from mmens.models.heads.learned_fusion_head import LearnedFusionHead
from mmens.ops import PackedDetections, match_boxes
from mmens.ops.targets import assign_targets
from mmens.testing.synthetic import synthetic_batch

ANCHOR = [2.0, 1.0, 0.5]


def clusters_and_targets(weights):
    packed, gt = synthetic_batch(4, 3, 25, num_classes=4, seed=3)
    wh = torch.tensor([640., 480, 640, 480])
    dets = PackedDetections(packed['bboxes'] / wh, packed['scores'], packed['labels'],
                            packed['members'], packed['images'], 3, 6)
    cl = match_boxes(dets, weights=weights)
    t = assign_targets(cl.fused_boxes, cl.fused_scores, cl.labels, cl.image_index,
                       gt['bboxes'] / wh, gt['labels'], gt['images'])
    return cl, t


def test_wbf_head_starts_as_wbf_with_the_anchor_weights():
    head = LearnedFusionHead(3, num_classes=4, theta_mode='wbf', anchor_weights=ANCHOR)
    w = head.matching_weights()  # fixed: the same in training and at test time
    torch.testing.assert_close(w, torch.tensor(ANCHOR) / sum(ANCHOR) * 3)
    head.train()
    torch.testing.assert_close(head.matching_weights(), w)
    cl, _ = clusters_and_targets(w)
    boxes, scores = head(cl)
    torch.testing.assert_close(boxes, cl.fused_boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(scores, cl.fused_scores, rtol=0, atol=1e-5)


def test_wbf_head_fit_shrinks_toward_the_anchor():
    cl, t = clusters_and_targets(torch.tensor(ANCHOR))
    thetas = {}
    for shrink in (0.0, 1e4):
        torch.manual_seed(0)
        head = LearnedFusionHead(3, num_classes=4, theta_mode='wbf', anchor_weights=ANCHOR,
                                 shrink=shrink)
        before = sum(head.loss_by_feat(cl, t).values()).item()
        head.fit_clusters(cl, t, max_iter=30)
        losses = head.loss_by_feat(cl, t)
        assert set(losses) == {'loss_reg', 'loss_cls', 'loss_cons', 'loss_shrink'}
        assert sum(losses.values()).item() <= before
        thetas[shrink] = head.theta().detach()
    anchor = torch.tensor(ANCHOR) / sum(ANCHOR)
    assert (thetas[1e4] - anchor).abs().max() < 1e-2  # held at the anchor
    assert (thetas[0.0] - anchor).abs().max() > 2e-2  # free: J moves Θ


def test_wbf_head_refuses_bad_anchor_weights():
    with pytest.raises(ValueError, match='anchor_weights must be 3 finite weights > 0'):
        LearnedFusionHead(3, theta_mode='wbf', anchor_weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match='anchor_weights must be 3'):
        LearnedFusionHead(3, theta_mode='wbf', anchor_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="conf_type must be one of .* got 'max'"):
        LearnedFusionHead(3, theta_mode='wbf', conf_type='max')
