"""mmens.experiments.loss_check: the training loss of fixed subsets on a fold's training images."""
import json
import os.path as osp

import numpy as np
import torch
from conftest import DATA, ROOT
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmens.experiments.loss_check import fixed_subset_losses, loss_preferred_subset, training_inputs


def test_fixed_subset_losses_are_the_detectors_loss_and_leave_the_global_rng_alone():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'cel',
                                   'cel_k3_6members_coco-real-val.py'))
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        names = [m['name'] for m in json.load(f)]
    with open(osp.join(DATA, 'annotations', 'val.json'), encoding='utf-8') as f:
        img_ids = sorted(i['id'] for i in json.load(f)['images'])[:6]
    cfg.train_dataloader.dataset.img_ids = img_ids
    model = MODELS.build(cfg.model)
    subsets = [(0, ), (1, 2), (0, 3, 5), (0, 1, 2, 3, 4, 5)]
    clusters, targets = training_inputs(model, cfg.train_dataloader.dataset)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    losses = fixed_subset_losses(model, clusters, targets, subsets, names, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = fixed_subset_losses(model, clusters, targets, subsets, names, seed=4)
    np.testing.assert_array_equal(losses['loss_cls'], again['loss_cls'])
    assert len(set(losses['loss_cls'].round(6))) == len(subsets)  # the subsets differ
    # the same as the detector's own loss with every image selecting the subset
    x = torch.zeros(len(img_ids), len(names))
    x[:, [model.members.index(names[i]) for i in subsets[2]]] = 1.0
    torch.manual_seed(4)
    ref = model.selection_loss(clusters, targets, x)
    assert np.isclose(losses['loss_cls'][2], float(ref['loss_cls']))
    assert np.isclose(losses['loss_box'][2], float(ref['loss_box']))
    total = losses['loss_cls'] + losses['loss_box']
    assert loss_preferred_subset(model, cfg.train_dataloader.dataset, subsets, names,
                                 seed=4) == subsets[int(np.argmin(total))]
