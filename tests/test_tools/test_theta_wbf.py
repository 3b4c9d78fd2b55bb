"""Θ on the WBF form out of fold (tools/analysis_tools/theta_wbf.py) on a few real images."""
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, load_tool

from mmens.apis import load_coco, load_member_batch
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.utils import register_all_modules

cross_val, baselines, theta_wbf = (load_tool('cross_val'), load_tool('fusion_baselines'),
                                   load_tool('theta_wbf'))
CONFIG = osp.join(ROOT, 'configs', 'learned', 'learned_theta-wbf_6members_coco-real-val.py')
MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
           'yolofastestv2-352', 'yolofastestv2-352-hflip']  # the config's members
ANCHOR = [1.8, 1.8, 0.7, 1.2, 0.3, 0.25]


@pytest.fixture(scope='module')
def val():
    register_all_modules()
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{m}.json')
                                     for m in MEMBERS])
    model = theta_wbf.build_theta_wbf(CONFIG, ANCHOR, 1.0).eval()
    return coco, cross_val.subset_batch(batch, batch.img_ids[:8]), model


def test_clusters_of_some_images_are_those_of_a_run_on_them(val):
    coco, batch, model = val
    clusters = model.extract_feat(dict(batch.packed))
    boxes, labels, images, ignore = theta_wbf.coco_gt(coco, batch)
    targets = theta_wbf.assign_targets(clusters.fused_boxes, clusters.fused_scores,
                                       clusters.labels, clusters.image_index, boxes, labels,
                                       images, gt_ignore=ignore)
    keep = torch.tensor([i % 3 == 0 for i in range(len(batch.img_ids))])
    sub, sub_t = theta_wbf._subset(clusters, targets, keep)
    ids = [i for i, k in zip(batch.img_ids, keep.tolist()) if k]
    alone = model.extract_feat(dict(cross_val.subset_batch(batch, ids).packed))
    torch.testing.assert_close(sub.fused_boxes, alone.fused_boxes)
    torch.testing.assert_close(sub.fused_scores, alone.fused_scores)
    assert sub_t.y_cls.shape == sub.fused_scores.shape and sub_t.y_cls.sum() > 0


def test_inner_cv_at_a_large_shrink_is_wbf_with_the_anchor_weights(val):
    coco, batch, model = val
    shrink, aps = theta_wbf.choose_shrink(batch, coco, batch.img_ids, model, num_folds=2,
                                          grid=(1e6, ))
    wbf, _ = baselines.run_fixed(batch, 'wbf', weights=ANCHOR, iou_thr=0.55)
    ref = CocoEvaluation(coco, wbf, batch.img_ids, ap_only=True).ap(np.arange(8))
    assert shrink == 1e6 and aps[0] == pytest.approx(ref, abs=2e-3)
