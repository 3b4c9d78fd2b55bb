"""k-fold cross-validation of ensembles on one annotated split (by image).

The members' own training images cannot teach an ensemble (their scores there are shifted),
so ensembles learn on a held-out split and are scored out of fold: each image is predicted
by a model that did not see it, and COCO AP is computed once over all out-of-fold results.
Training goes through mmengine's ``Runner`` exactly as ``tools/train.py`` does.

A helper module of the report tools in tools/analysis_tools (not part of the installed
package); those tools and the tests import it with this folder on ``sys.path``.
"""
import copy
import logging
import os.path as osp
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from mmens.datasets.ensemble_dataset import fold_image_ids
from mmens.engine.runner import EnsembleRunner
from mmens.apis.inference import fuse_batch
from mmens.apis.member_files import MemberBatch
from mmens.ops.packed import select_images


def subset_batch(batch: MemberBatch, img_ids: Sequence[int]) -> MemberBatch:
    """The part of ``batch`` on ``img_ids`` (re-indexed, same members and categories)."""
    keep_ids = sorted(set(int(i) for i in img_ids))
    pos = torch.tensor([batch.img_ids.index(i) for i in keep_ids], dtype=torch.long)
    return MemberBatch(batch.names, keep_ids, batch.cat_ids, select_images(batch.packed, pos),
                       batch.members)


def fold_positions(img_ids: Sequence[int], num_folds: int, seed: int
                   ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``(train, held-out)`` positions in ``img_ids`` of each fold of the seeded k-fold
    partition (the dataset's ``fold``); every held-out fold must be non-empty."""
    if num_folds > len(img_ids):
        raise ValueError(f'{num_folds} folds need at least {num_folds} images, got '
                         f'{len(img_ids)}')
    pos = {i: k for k, i in enumerate(img_ids)}
    return [tuple(np.array([pos[i] for i in fold_image_ids(img_ids, num_folds, f, split,
                                                           seed)], dtype=np.int64)
                  for split in ('train', 'val')) for f in range(num_folds)]


def fold_config(config: str, work_dir: str, fold: Optional[dict],
                cfg_options: Optional[dict] = None) -> Config:
    """The training config of one fold: train on ``fold`` (split 'train'), no validation."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    # a unique logger per run (runs in the same second would share the timestamp name)
    cfg.experiment_name = f'{osp.basename(osp.normpath(work_dir))}_{time.time_ns()}'
    if fold is not None:
        cfg.train_dataloader.dataset.fold = dict(fold, split='train')
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.log_level = 'WARNING'
    return cfg


class FoldRunner(EnsembleRunner):
    """The Runner of ``tools/train.py`` (:class:`EnsembleRunner`: checkpoints that load
    weights-only) for the many short fits of a cross-validation: the same training, without
    the environment report of every run (``collect_env`` takes about 2 s, as long as some
    fits)."""

    def _log_env(self, env_cfg: dict) -> None:
        pass


def train_from_cfg(cfg: Config) -> Tuple[torch.nn.Module, float]:
    """Train with mmengine's Runner (the ``tools/train.py`` path); returns model, seconds."""
    t0 = time.perf_counter()
    runner = FoldRunner.from_cfg(cfg)
    runner.train()
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    seconds = time.perf_counter() - t0
    logger = MMLogger.get_current_instance()
    for handler in list(logger.handlers):  # release the run's log file
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    return model.eval(), seconds


def runner_fold(config: str, batch: MemberBatch, work_root: str, k: int,
                num_folds: int = 5, seed: int = 0, cfg_options: Optional[dict] = None
                ) -> Tuple[List[dict], float, torch.nn.Module]:
    """Train ``config`` on fold ``k`` with the Runner (as ``tools/train.py`` with
    ``train_dataloader.dataset.fold`` set) and fuse that fold's held-out images of
    ``batch``: returns their results, the fit seconds and the model."""
    cfg = fold_config(config, osp.join(work_root, f'fold{k}'),
                      dict(num_folds=num_folds, index=k, seed=seed), copy.deepcopy(cfg_options))
    model, seconds = train_from_cfg(cfg)
    test = fold_image_ids(batch.img_ids, num_folds, k, 'val', seed)
    res, _ = fuse_batch(model, subset_batch(batch, test))
    return res, seconds, model
