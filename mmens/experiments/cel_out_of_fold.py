"""e2e-CEL trained per fold and applied to the held-out fold (the budget report's e2e-CEL).

Each fold's model is trained through mmengine's Runner (the ``tools/train.py`` path),
starting from that fold's best fixed subset (:func:`warm_start`). With ``bags > 1``, several
selection nets are trained per fold, each on a random part of the fold's training images,
and the held-out images are selected by the mean of their scores ĉ (bagging: a departure
from the warm start that only some of the training images support is voted down).
"""
import copy
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO

from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.models.utils import select_members
from .cross_val import fold_config, subset_batch, train_from_cfg
from mmens.apis.inference import build_fixed_ensemble, fuse_batch, member_remap
from .loss_check import loss_preferred_subset
from mmens.apis.member_files import MemberBatch


def fuse_selected(batch: MemberBatch, selection: torch.Tensor, **fusion_cfg) -> List[dict]:
    """WBF per image of the members ``selection [I, N]`` (0/1, batch member order) picks."""
    sub = copy.copy(batch)
    sub.packed = select_members(batch.packed, selection)
    model = build_fixed_ensemble(batch.names, 'wbf', **fusion_cfg)
    return fuse_batch(model, sub)[0]


def warm_start(subset: Sequence[int], num_members: int, gap: float = 0.25) -> List[float]:
    """ĉ ``[N]`` whose exact top-k or knapsack solution is ``subset`` (when it is feasible):
    ``+gap/2`` for its members, ``-gap/2`` for the others (never worth adding)."""
    return [gap / 2 if i in subset else -gap / 2 for i in range(num_members)]


def cel_out_of_fold(batch: MemberBatch, config: str, setting: dict, folds: list,
                    best_subsets: list, work_root: str, num_folds: int, seed: int,
                    fusion_cfg: dict,
                    cfg_options: Optional[dict] = None, warm_start_gap: float = 0.25,
                    coco: Optional[COCO] = None, in_sample: Optional[List[float]] = None,
                    loss_check: Optional[List[dict]] = None,
                    feasible_subsets: Optional[List[tuple]] = None, bags: int = 1,
                    bag_fraction: float = 0.8) -> Tuple[List[dict], np.ndarray, float]:
    """Train e2e-CEL per fold (Runner), starting from that fold's best fixed subset
    (``best_subsets[k]``), and select + fuse the held-out images; returns the results, the
    selection ``[I, N]`` and the total fit seconds. With ``coco`` and a list ``in_sample``,
    also appends each fold model's AP on its own training images (a diagnostic: below the
    best fixed subset's there, the training loss itself leads away from AP). With a list
    ``loss_check`` and ``feasible_subsets``, also appends per fold ``keep``: whether the
    training loss prefers that fold's best fixed subset among ``feasible_subsets`` on its
    training images (:mod:`mmens.experiments.loss_check`). With ``bags > 1``, ``bags`` nets per
    fold, each on a random ``bag_fraction`` of its training images (seeded by ``seed`` and
    the fold), select by their mean ĉ (:func:`bagged_select`)."""
    n = len(batch.names)
    if bags < 1 or not 0 < bag_fraction <= 1:
        raise ValueError(f'cel_out_of_fold: bags must be >= 1 and 0 < bag_fraction <= 1, got '
                         f'{bags} and {bag_fraction}')
    if bags > 1 and loss_check is not None:
        raise ValueError('cel_out_of_fold: the loss check reads one model per fold; '
                         'it does not combine with bags')
    if list(batch.img_ids) != sorted(batch.img_ids):
        raise ValueError('cel_out_of_fold: the batch images must be sorted by id')
    results, selection, fit_s = [], np.zeros((len(batch.img_ids), n)), 0.0
    selector = (dict(k=setting['k']) if 'k' in setting else
                dict(budget=setting['budget']))
    for k, ((train, test), best) in enumerate(zip(folds, best_subsets)):
        init = warm_start(best, n, warm_start_gap)
        rng = np.random.RandomState(seed * 1000 + k)
        models = []
        for j in range(bags):
            if bags > 1:  # a random part of the fold's training images
                part_ids = [batch.img_ids[p] for p in np.sort(rng.choice(
                    train, int(round(bag_fraction * len(train))), replace=False))]
                cfg = fold_config(config, osp.join(work_root, f'fold{k}', f'bag{j}'), None,
                                  copy.deepcopy(cfg_options))
            else:
                part_ids = list(batch.img_ids)  # folds of these images
                cfg = fold_config(config, osp.join(work_root, f'fold{k}'),
                                  dict(num_folds=num_folds, index=k, seed=seed),
                                  copy.deepcopy(cfg_options))
            sel_cfg = {key: v for key, v in cfg.model.selector.items()
                       if key not in ('k', 'budget', 'costs')}
            cfg.model.selector = dict(sel_cfg, **selector)
            cfg.model.selection_net.init_scores = init
            cfg.train_dataloader.dataset.img_ids = part_ids
            model, seconds = train_from_cfg(cfg)
            models.append(model)
            fit_s += seconds
        if loss_check is not None:
            prefers = loss_preferred_subset(model, cfg.train_dataloader.dataset,
                                            feasible_subsets, batch.names, seed)
            loss_check.append(dict(keep=prefers == tuple(best), prefers=list(prefers),
                                   best=list(best)))
        remap = member_remap(model.members, batch.names)

        def select_and_fuse(positions):
            part = subset_batch(batch, [batch.img_ids[i] for i in positions])
            with torch.no_grad():
                packed = dict(part.packed)
                packed['members'] = remap[packed['members']]
                x = bagged_select(models, packed)  # [I_part, N], model member order
            x = x[:, remap].cpu().numpy()  # batch member order; rows: sorted images
            return x, part, fuse_selected(part, torch.as_tensor(x, dtype=torch.float32),
                                          **fusion_cfg)

        x, _, res = select_and_fuse(test)
        selection[np.sort(test)] = x
        results += res
        if coco is not None and in_sample is not None:
            _, part, res = select_and_fuse(train)
            in_sample.append(CocoEvaluation(coco, res, part.img_ids).metrics()['AP'])
    return results, selection, fit_s


def bagged_select(models: Sequence[torch.nn.Module], packed: dict) -> torch.Tensor:
    """Hard selection ``[B, N]`` by the mean ĉ of several ``CELDetector``s with the same
    members and selector (one model: its own :meth:`select`)."""
    if len(models) == 1:
        return models[0].select(packed)[0]
    scores = torch.stack([m.member_scores(packed, m.extract_feat(packed))
                          for m in models])  # [bags, B, N]
    return models[0].selector.exact(scores.mean(0))
