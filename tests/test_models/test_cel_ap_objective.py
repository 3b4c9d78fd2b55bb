"""CELDetector ``objective='coco_ap'``: the table is the AP change of the scoring path."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mmens.apis import load_coco, load_member_batch
from mmens.experiments.cel_budget import fuse_selected
from mmens.experiments.cross_val import subset_batch
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.models.detectors.cel_ap_objective import selector_subsets


def test_coco_ap_table_is_the_ap_change_that_the_report_scores():
    from mmdet.registry import DATASETS, MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'cel', 'cel_k3_6members_coco-real-val.py'))
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    img_ids = sorted(coco.getImgIds())[:6]
    cfg.train_dataloader.dataset.img_ids = img_ids
    cfg.model.selector.k = 2
    cfg.model.selection_net.init_scores = [0.1, -0.1, 0.1, -0.1, -0.1, -0.1]
    cfg.model.train_cfg.objective = 'coco_ap'
    model = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    data = model.data_preprocessor(pseudo_collate([dataset[i] for i in range(6)]), True)
    inputs = model.loss_inputs(data['inputs'], data['data_samples'])
    table = inputs[-1]
    reference = model.selector.exact(model.selection_net(*inputs[2:4]))  # members 0 and 2
    assert reference.sum(1).eq(2).all() and reference[:, [0, 2]].eq(1).all()
    assert table.table.shape == (15, 6) and (table.loss(reference) == 0).all()
    # the scoring path: WBF of the selected members of the members' files, official gt
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        names = [m['name'] for m in json.load(f)]
    batch = subset_batch(load_member_batch(
        coco, [osp.join(DATA, 'predictions', 'val', f'{n}.json') for n in names], names),
        img_ids)
    cols = [names.index(m) for m in model.members]  # model order -> batch order
    fusion = dict(model.fusion_cfg)

    def ap(selection):  # [B, N] model order
        sel = torch.zeros(len(img_ids), len(names))
        sel[:, cols] = selection
        return CocoEvaluation(coco, fuse_selected(batch, sel, **fusion), img_ids).metrics()['AP']

    base = ap(reference)
    rng = np.random.RandomState(0)
    subsets = selector_subsets(model.selector, 6)
    for _ in range(4):
        b, s = rng.randint(6), rng.randint(len(subsets))
        x = reference.clone()
        x[b] = subsets[s]
        want = -100.0 * (ap(x) - base)
        got = float(table.deltas(reference, subsets[s:s + 1])[0, b])
        assert got == pytest.approx(want, abs=1e-5)  # the same up to float32 storage
    assert table.table.abs().max() > 0.1  # some switch moves AP by > 0.1 point
    # training: the perturbed-loss gradient reaches the selection net, loss_ap is logged
    losses = model.loss_by_feat(*inputs)
    assert set(losses) >= {'loss_ap', 'loss_select', 'loss_anchor'}
    losses['loss_select'].backward()
    grads = [p.grad for p in model.selection_net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_coco_ap_needs_the_perturbed_loss_and_an_enumerable_selector():
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'cel', 'cel_k3_6members_coco-real-val.py'))
    cfg.model.train_cfg.objective = 'coco_ap'
    cfg.model.train_cfg.selection_grad = 'jacobian'
    with pytest.raises(ValueError, match="needs selection_grad='perturbed_loss'"):
        MODELS.build(cfg.model)
    cfg.model.train_cfg.selection_grad = 'perturbed_loss'
    cfg.model.train_cfg.loss_ap = 0
    with pytest.raises(ValueError, match='loss_ap must be a number > 0'):
        MODELS.build(cfg.model)
    cfg.model.train_cfg.objective = 'ap'
    with pytest.raises(ValueError, match='objective must be one of'):
        MODELS.build(cfg.model)
    budget = Config.fromfile(osp.join(ROOT, 'configs', 'cel',
                                      'cel_budget-0.4s_6members_coco-real-val.py'))
    budget.model.train_cfg.objective = 'coco_ap'
    MODELS.build(budget.model)  # the enumerated knapsack: every selection is known
    budget.model.selector.solver = 'dp'
    with pytest.raises(ValueError, match='needs the enumerated knapsack'):
        MODELS.build(budget.model)
