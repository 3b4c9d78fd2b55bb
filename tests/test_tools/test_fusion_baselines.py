"""Benchmark building blocks (tools/analysis_tools/fusion_baselines.py, cross_val.py) on
a few real images: the mmens rules equal the reference."""
import os.path as osp

import numpy as np
import pytest
from conftest import DATA, load_tool

from mmens.apis import load_coco, load_member_batch
from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap

cross_val, baselines = load_tool('cross_val'), load_tool('fusion_baselines')
subset_batch = cross_val.subset_batch
run_ensemble_boxes_wbf, run_fixed = baselines.run_ensemble_boxes_wbf, baselines.run_fixed
weight_grid = baselines.weight_grid

MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'yolofastestv2-352']


@pytest.fixture(scope='module')
def val():
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{m}.json')
                                     for m in MEMBERS])
    return coco, subset_batch(batch, batch.img_ids[:12])


def test_mmens_wbf_results_equal_ensemble_boxes(val):
    coco, batch = val
    ours, _ = run_fixed(batch, 'wbf', iou_thr=0.55)
    ref, _ = run_ensemble_boxes_wbf(batch, iou_thr=0.55)
    assert len(ours) == len(ref)
    key = lambda r: (r['image_id'], r['category_id'], round(r['score'], 4), *np.round(r['bbox'], 1))
    assert sorted(map(key, ours)) == sorted(map(key, ref))
    a = CocoEvaluation(coco, ours, batch.img_ids).metrics()
    b = CocoEvaluation(coco, ref, batch.img_ids).metrics()
    assert a['AP'] == pytest.approx(b['AP'], abs=1e-6)


def test_fast_bootstrap_ap_equals_pycocotools(val):
    coco, batch = val
    res, _ = run_fixed(batch, 'nmw')
    ev = CocoEvaluation(coco, res, batch.img_ids)
    rng = np.random.RandomState(0)
    for _ in range(3):
        pos = rng.randint(0, len(batch.img_ids), len(batch.img_ids))
        assert ev.ap(pos) == pytest.approx(ev.metrics(pos)['AP'], abs=1e-12)
    # AP only (compiled matching) is the same AP, and has nothing else
    quick = CocoEvaluation(coco, res, batch.img_ids, ap_only=True)
    assert quick.ap(pos) == pytest.approx(ev.ap(pos), abs=1e-12)
    with pytest.raises(ValueError, match='AP only'):
        quick.metrics()
    same = paired_bootstrap(ev, ev, 20)
    assert same['diff'] == 0 and same['lo'] == 0 and same['hi'] == 0


def test_weight_grid_ties_flips():
    grid = weight_grid(['a', 'a-hflip', 'b'], values=(1.0, 2.0))
    assert all(w[0] == w[1] for w in grid)
    assert len(grid) == 3  # (1,1),(1,2),(2,1); (2,2) duplicates equal weights


def test_grid_out_of_fold_equals_a_grid_search_per_fold(val):
    from mmens.apis import build_fixed_ensemble, fuse_batch
    fold_positions = cross_val.fold_positions
    grid_search_wbf = baselines.grid_search_wbf
    grid_wbf_out_of_fold = baselines.grid_wbf_out_of_fold
    coco, batch = val
    grid = [(1.0, 1.0, 1.0, 1.0), (3.0, 1.0, 1.0, 1.0), (1.0, 1.0, 3.0, 1.0),
            (1.0, 1.0, 1.0, 3.0)]
    folds = fold_positions(batch.img_ids, 3, 0)
    results, chosen, _ = grid_wbf_out_of_fold(batch, coco, folds, grid)
    expected = []
    for (train, test), weights in zip(folds, chosen):
        best, _ = grid_search_wbf(batch, coco, [batch.img_ids[i] for i in train], grid)
        assert best['weights'] == weights
        model = build_fixed_ensemble(batch.names, 'wbf', **best)
        expected += fuse_batch(model, subset_batch(batch, [batch.img_ids[i] for i in test]))[0]
    assert len({tuple(w) for w in chosen}) > 1  # the folds do not all pick the same
    key = lambda r: (r['image_id'], r['category_id'], r['score'], *r['bbox'])  # noqa: E731
    assert sorted(map(key, results)) == sorted(map(key, expected))
