"""EnsembleDetector's fusion thresholds: buffers, matching, the inner-CV search
(mmens.models.detectors.fusion_search) and FusionSearchHook's fast COCO AP."""
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from mmens.engine.fusion_search_hook import FusionSearchHook, fused_aps
from mmens.models.detectors.ensemble_detector import EnsembleDetector
from mmens.models.detectors.fusion_search import (FusionSearch, conf_type_scores,
                                                  inner_folds, search_fusion)
from mmens.ops.clustering import CONF_TYPES
from mmens.testing.synthetic import synthetic_batch


def batch(num_images=8, seed=0):
    """A small seeded batch and its samples (ground truth in pixels)."""
    packed, gt = synthetic_batch(num_images, 3, boxes_per_member=20, num_classes=5,
                                 objects_per_image=3, seed=seed)
    samples = []
    for b, (w, h) in enumerate(packed['image_sizes'].tolist()):
        s = DetDataSample(metainfo=dict(img_shape=(int(h), int(w))))
        on = gt['images'] == b
        s.gt_instances = InstanceData(bboxes=gt['bboxes'][on], labels=gt['labels'][on])
        samples.append(s)
    return packed, samples


def detector(**head):
    return EnsembleDetector(['a', 'b', 'c'], head=dict(type='LearnedWeightsHead', **head))


def test_thresholds_are_saved_buffers_and_drive_the_fusion():
    model = detector()
    assert model.fusion_cfg() == dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg')
    model.set_fusion_cfg(0.7, 0.3, 'max')
    state = model.state_dict()
    assert float(state['fusion_iou_thr']) == 0.7 and int(state['fusion_conf_type']) == 1
    other = detector()
    other.load_state_dict(state)
    assert other.fusion_cfg() == dict(iou_thr=0.7, skip_box_thr=0.3, conf_type='max')
    old = {k: v for k, v in state.items() if not k.startswith('fusion_')}
    older = detector()  # a checkpoint from before the buffers: the config's values
    older.load_state_dict(old)
    assert older.fusion_cfg() == dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg')
    packed, _ = batch()
    other.eval()
    clusters = other.extract_feat(packed)
    low = packed['scores'] < 0.3  # skipped by their raw score, as ensemble-boxes does
    assert bool((clusters.box_cluster[low] == -1).all())
    assert bool((clusters.box_cluster[~low] >= 0).all())
    with pytest.raises(ValueError, match="conf_type must be one of"):
        EnsembleDetector(['a'], head=dict(type='LearnedWeightsHead'),
                         matching=dict(conf_type='mean'))


def test_conf_type_scores_equal_wbf_of_each_conf_type():
    packed, _ = batch()
    model = detector()
    with torch.no_grad():
        model.head.phi.copy_(torch.tensor([0.3, -0.5, 1.2]))
    model.eval()
    avg = model.match(packed, model.head, 0.55, 0.1, 'avg')
    got = conf_type_scores(avg, packed['scores'], packed['members'],
                           model.head.matching_weights(), CONF_TYPES)
    def by_first_box(c):  # clusters in the order of their first packed box
        kept = c.box_cluster >= 0
        first = torch.full((len(c.labels),), len(kept)).scatter_reduce_(
            0, c.box_cluster[kept], torch.nonzero(kept).flatten(), 'amin')
        return torch.argsort(first)

    ref = by_first_box(avg)
    for conf_type, score in zip(CONF_TYPES, got):
        want = model.match(packed, model.head, 0.55, 0.1, conf_type)
        order = by_first_box(want)  # conf_type reorders the clusters, nothing else
        assert torch.equal(want.fused_boxes[order], avg.fused_boxes[ref])
        assert torch.allclose(score[ref].float(), want.fused_scores[order], rtol=1e-5,
                              atol=1e-6), conf_type


def test_inner_folds_partition_the_images():
    folds = inner_folds(10, 4, seed=1)
    assert len(folds) == 4 and all(len(f) for f in folds)
    assert sorted(torch.cat(folds).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(folds, inner_folds(10, 4, seed=1)))
    assert len(inner_folds(3, 4, seed=0)) == 3


def test_search_scores_every_candidate_on_every_image_and_takes_the_best():
    packed, samples = batch(num_images=4)
    model = detector(max_iter=10)
    seen = []

    def evaluator(m, candidates, sizes, smp, num_bootstrap=0):  # the 6th is the best
        seen.append([sorted(set(c[3].tolist())) for c in candidates])
        return [0.9 if k == 5 else 0.1 for k in range(len(candidates))]

    # the model's values (0.55, 0.0, 'avg') come first: 2 x 1 x 3 candidates
    search = FusionSearch(evaluator, (0.55, 0.7), (0.0, ), ('avg', 'max', 'box_and_model_avg'),
                          num_folds=2, num_bootstrap=0)
    model.fusion_search = search
    model.train()
    clusters, _ = model.loss_inputs(packed, samples)  # searched, then the clusters
    assert len(seen[0]) == 6 and all(imgs == list(range(4)) for imgs in seen[0])
    chosen = dict(iou_thr=0.7, skip_box_thr=0.0, conf_type='box_and_model_avg')
    assert model.fusion_cfg() == chosen and bool(model.fusion_searched)
    assert torch.equal(clusters.fused_scores, model.match(
        packed, model.head, 0.7, 0.0, 'box_and_model_avg').fused_scores)
    model.loss_inputs(packed, samples)  # once: the flag is saved, resuming skips it
    assert len(seen) == 1


def test_fused_aps_rank_the_ground_truth_first():
    packed, samples = batch(num_images=4)
    model = detector().eval()
    sizes = packed['image_sizes']
    gt = torch.cat([s.gt_instances.bboxes for s in samples]) / sizes.repeat(1, 2)[
        torch.cat([torch.full((len(s.gt_instances),), b) for b, s in enumerate(samples)])]
    truth = (gt, torch.ones(len(gt)), torch.cat([s.gt_instances.labels for s in samples]),
             torch.cat([torch.full((len(s.gt_instances),), b) for b, s in enumerate(samples)]))
    fused = model.fuse(packed)
    aps = fused_aps(model, [truth, fused], sizes, samples, num_bootstrap=3)
    assert aps[0][0] == pytest.approx(1.0) and 0.0 < aps[1][0] < 1.0
    assert aps[0].shape == (4, ) and aps[0][1:] == pytest.approx(1.0)


def test_hook_arguments_and_model_are_checked():
    for kwargs, msg in ((dict(iou_thrs=()), 'iou_thrs must be a non-empty list'),
                        (dict(skip_box_thrs=(1.5,)), 'skip_box_thrs must be'),
                        (dict(conf_types=('mean',)), 'conf_types must be'),
                        (dict(num_folds=1), 'num_folds must be an integer >= 2'),
                        (dict(confidence=2), 'confidence must be in')):
        with pytest.raises(ValueError, match=msg):
            FusionSearchHook(**kwargs)

    class Runner:
        model = torch.nn.Linear(1, 1)
    with pytest.raises(TypeError, match='remove the hook from custom_hooks'):
        FusionSearchHook().before_train(Runner())
    Runner.model = detector()
    FusionSearchHook(iou_thrs=(0.6,)).before_train(Runner())
    assert Runner.model.fusion_search.iou_thrs == (0.6,)


def test_search_keeps_the_config_values_unless_clearly_better():
    packed, samples = batch(num_images=4)
    model = detector(max_iter=5)
    model.set_fusion_cfg(0.6, 0.0, 'avg')
    resampled = []

    def evaluator(m, candidates, sizes, smp, num_bootstrap=0):  # candidate 0: the config
        if not num_bootstrap:
            return [0.5] + [0.6] * (len(candidates) - 1)
        resampled.append((len(candidates), num_bootstrap))
        return [[0.5] * 5, [0.6, 0.6, 0.6, 0.6, 0.4]]  # better in 3 of 4 resamples

    search = FusionSearch(evaluator, (0.7, ), (0.0, ), ('avg', ), num_folds=2,
                          num_bootstrap=4)
    # better in 3 of 4 resamples: below confidence 0.9, the config's values stay
    assert search_fusion(model, packed, samples, search)[0]['iou_thr'] == 0.6
    assert resampled == [(2, 4)]  # the config's values and the best, resampled
    table = search_fusion(model, packed, samples, search)[1]
    assert [c for c, _ in table] == [(0.6, 0.0, 'avg'), (0.7, 0.0, 'avg')]
    search = search._replace(confidence=0.75)
    assert search_fusion(model, packed, samples, search)[0]['iou_thr'] == 0.7
