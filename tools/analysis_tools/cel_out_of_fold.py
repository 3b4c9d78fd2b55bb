"""e2e-CEL trained per fold and applied to the held-out fold (the budget report's e2e-CEL).

Each fold's model is trained through mmengine's Runner, exactly as ``tools/train.py``
trains it: the config with ``train_dataloader.dataset.fold`` set. Its warm start (the best
fixed subset of that fold's training images) is computed inside training.

A helper module of the report tools in tools/analysis_tools (not part of the installed
package).
"""
import copy
import os.path as osp
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO

from mmens.apis.inference import build_fixed_ensemble, fuse_batch, member_remap
from mmens.apis.member_files import MemberBatch
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.models.utils import select_members
from cross_val import fold_config, subset_batch, train_from_cfg


def fuse_selected(batch: MemberBatch, selection: torch.Tensor, **fusion_cfg) -> List[dict]:
    """WBF per image of the members ``selection [I, N]`` (0/1, batch member order) picks."""
    sub = copy.copy(batch)
    sub.packed = select_members(batch.packed, selection)
    model = build_fixed_ensemble(batch.names, 'wbf', **fusion_cfg)
    return fuse_batch(model, sub)[0]


def cel_fold_config(config: str, setting: dict, work_dir: str, fold: dict,
                    cfg_options: Optional[dict] = None):
    """The config that ``tools/train.py`` trains for one fold and budget setting
    (``{'k': k}`` or ``{'budget': seconds}``), as :func:`fold_config` gives it."""
    cfg = fold_config(config, work_dir, fold, copy.deepcopy(cfg_options))
    sel_cfg = {key: v for key, v in cfg.model.selector.items()
               if key not in ('k', 'budget', 'costs')}
    cfg.model.selector = dict(sel_cfg, **setting)
    return cfg


def cel_fold(batch: MemberBatch, config: str, setting: dict, folds: list, k: int,
             work_root: str, seed: int, fusion_cfg: dict,
             cfg_options: Optional[dict] = None, coco: Optional[COCO] = None) -> dict:
    """Train e2e-CEL on fold ``k`` of ``folds`` (Runner, as ``tools/train.py``) and select +
    fuse its held-out images.

    Returns:
        dict: ``results`` (COCO-results of the held-out images), ``selection`` (``[I_k, N]``
        0/1: the members fused, held-out images in id order, batch member order), ``cost``
        (``[I_k]`` seconds per image: the members run, probes included, and the selection
        net), ``probes`` (names), ``selection_seconds`` (the net's), ``fit_s``, ``warm_start``
        (the subset training started from, batch member order) and, with ``coco``,
        ``train_AP``: the model's AP on its own training images (a diagnostic: below the
        best fixed subset's there, the training loss itself leads away from AP).
    """
    n = len(batch.names)
    if list(batch.img_ids) != sorted(batch.img_ids):
        raise ValueError('cel_fold: the batch images must be sorted by id')
    train, test = folds[k]
    cfg = cel_fold_config(config, setting, osp.join(work_root, f'fold{k}'),
                          dict(num_folds=len(folds), index=k, seed=seed), cfg_options)
    cfg.train_dataloader.dataset.img_ids = list(batch.img_ids)  # folds of these images
    model, seconds = train_from_cfg(cfg)
    remap = member_remap(model.members, batch.names)  # batch order → model order

    def select_and_fuse(positions):
        part = subset_batch(batch, [batch.img_ids[i] for i in positions])
        with torch.no_grad():
            packed = dict(part.packed)
            packed['members'] = remap[packed['members']]
            x = model.select(packed)[0]  # [I_part, N], model member order
            # what the image costs: the members run (probes and selected; all of them
            # when the net reads every member) and the selection net
            cost = model.run_seconds(x).cpu().numpy()  # [I_part]
        x = x[:, remap].cpu().numpy()  # batch member order; rows: sorted images
        return x, cost, part, fuse_selected(part, torch.as_tensor(x, dtype=torch.float32),
                                            **fusion_cfg)

    x, cost, _, res = select_and_fuse(test)
    # train_cfg.warm_start=False (e.g. the seed's recipe) leaves no warm start subset
    warm = getattr(model, 'warm_start_subset', None)
    out = dict(results=res, selection=x, cost=cost, fit_s=seconds,
               probes=[model.members[int(i)] for i in model.probe_index],
               selection_seconds=float(model.selection_seconds),
               warm_start=None if warm is None else [b for b in range(n)
                                                     if int(remap[b]) in warm])
    if coco is not None:
        _, _, part, res = select_and_fuse(train)
        out['train_AP'] = CocoEvaluation(coco, res, part.img_ids, ap_only=True).ap(
            np.arange(len(part.img_ids)))
    return out


def cel_out_of_fold(batch: MemberBatch, config: str, setting: dict, folds: list,
                    work_root: str, seed: int, fusion_cfg: dict,
                    cfg_options: Optional[dict] = None, coco: Optional[COCO] = None,
                    on_fold: Optional[Callable[[int, dict], None]] = None
                    ) -> Tuple[List[dict], np.ndarray, List[dict]]:
    """:func:`cel_fold` on every fold: the out-of-fold results, the selection ``[I, N]``
    (batch member order) and each fold's output (``on_fold(k, output)`` after each)."""
    results, selection, per_fold = [], np.zeros((len(batch.img_ids), len(batch.names))), []
    for k, (_, test) in enumerate(folds):
        out = cel_fold(batch, config, setting, folds, k, work_root, seed, fusion_cfg,
                       cfg_options, coco)
        selection[np.sort(test)] = out['selection']
        results += out['results']
        per_fold.append(out)
        if on_fold is not None:
            on_fold(k, out)
    return results, selection, per_fold
