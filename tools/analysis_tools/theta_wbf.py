"""Θ on the WBF form out of fold: anchor weights, ``shrink`` by inner cross-validation.

For one outer fold: the anchor Θ0 are the learned WBF weights fitted on the fold's
training images (``configs/learned/learned-weights_*``, threshold search off);
``shrink`` is chosen among :data:`SHRINK_GRID` by inner k-fold cross-validation on the
same training images (fast COCO AP of the pooled inner held-out predictions; the anchor
is the outer fold's, fitted on all its training images); then
``configs/learned/learned_theta-wbf_*`` is trained through the Runner with both.

A helper module of the report tools in tools/analysis_tools (not part of the installed
package); those tools and the tests import it with this folder on ``sys.path``.
"""
import copy
import os.path as osp
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from pycocotools.coco import COCO

from cross_val import runner_fold, subset_batch
from mmens.apis.inference import fuse_batch
from mmens.apis.member_files import MemberBatch
from mmens.datasets.ensemble_dataset import fold_image_ids
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.models.detectors.fusion_search import take_clusters
from mmens.ops.targets import TargetAssignment, assign_targets
from mmens.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs', 'learned')
THETA_WBF = osp.join(CONFIGS, 'learned_theta-wbf_6members_coco-real-val.py')
WEIGHTS = osp.join(CONFIGS, 'learned-weights_6members_coco-real-val.py')
THETA_GLOBAL = osp.join(CONFIGS, 'learned_theta-global_6members_coco-real-val.py')
#: the anchor: learned WBF weights without the threshold search
ANCHOR_OPTIONS = {'custom_hooks': []}
#: λ of ``λ/2 ‖log Θ − log Θ0‖²`` searched by the inner cross-validation (log-spaced; the
#: largest keeps Θ at the anchor to within 1e-3)
SHRINK_GRID = (0.01, 0.1, 1.0, 10.0, 1000.0)


def coco_gt(coco: COCO, batch: MemberBatch) -> Tuple[torch.Tensor, ...]:
    """The ground truth of ``batch``'s images as mmdet's CocoDataset keeps it (boxes
    under 1 pixel or of area 0 dropped, crowd boxes ignored): boxes ``[G, 4]``
    normalised xyxy, labels, image positions ``[G]`` and ignore flags ``[G]``."""
    cat_index = {c: i for i, c in enumerate(batch.cat_ids)}
    sizes = batch.packed['image_sizes'].double()  # [I, 2] (width, height)
    rows = []
    for pos, img in enumerate(batch.img_ids):
        for a in coco.imgToAnns.get(img, []):
            x, y, w, h = a['bbox']
            if a.get('area', w * h) <= 0 or w < 1 or h < 1 or a['category_id'] not in cat_index:
                continue
            rows.append((x, y, x + w, y + h, cat_index[a['category_id']], pos,
                         bool(a.get('iscrowd', 0))))
    t = torch.tensor([r[:4] for r in rows], dtype=torch.float64).reshape(-1, 4)
    images = torch.tensor([r[5] for r in rows], dtype=torch.long)
    return (t / sizes[images].repeat(1, 2), torch.tensor([r[4] for r in rows],
                                                           dtype=torch.long),
            images, torch.tensor([r[6] for r in rows], dtype=torch.bool))


def _subset(clusters, targets: TargetAssignment, keep: torch.Tensor):
    """The clusters (and targets) of the images ``keep`` ``[I]`` bool: matching and
    targets are per image, so they are those of a run on these images alone (as
    :func:`take_clusters` gives them for a fit)."""
    return take_clusters(clusters, targets, keep[clusters.image_index])


def build_theta_wbf(config: str, anchor: Sequence[float], shrink: float):
    """The Θ-on-WBF model of ``config`` with the anchor weights and ``shrink`` set."""
    cfg = Config.fromfile(config)
    cfg.model.head.update(anchor_weights=list(anchor), shrink=float(shrink))
    return MODELS.build(cfg.model)


def choose_shrink(batch: MemberBatch, coco: COCO, train_ids: Sequence[int], model,
                  num_folds: int = 3, seed: int = 0, grid: Sequence[float] = SHRINK_GRID
                  ) -> Tuple[float, List[float]]:
    """``shrink`` by ``num_folds``-fold inner CV on ``train_ids``: each value's head is
    fitted on the inner training clusters and fuses the inner held-out images (the
    inference path, :func:`fuse_batch`); returns the best value (ties: the larger, the
    closer to the anchor) and the inner-CV AP of every value.

    Args:
        model: a Θ-on-WBF model (:func:`build_theta_wbf`) with the anchor weights set;
            it is not changed (each value is fitted on a copy).
    """
    sub = subset_batch(batch, train_ids)
    model = copy.deepcopy(model).eval()
    clusters = model.extract_feat(dict(sub.packed))  # matched with the anchor weights
    gt_boxes, gt_labels, gt_images, gt_ignore = coco_gt(coco, sub)
    targets = assign_targets(clusters.fused_boxes, clusters.fused_scores, clusters.labels,
                             clusters.image_index, gt_boxes, gt_labels, gt_images,
                             iou_thr=model.train_cfg['iou_thr'], gt_ignore=gt_ignore)
    inner = [fold_image_ids(sub.img_ids, num_folds, f, 'val', seed)
             for f in range(num_folds)]
    pos = {i: k for k, i in enumerate(sub.img_ids)}
    aps = []
    for shrink in grid:
        results = []
        for held_out in inner:
            keep = torch.ones(len(sub.img_ids), dtype=torch.bool)
            keep[[pos[i] for i in held_out]] = False
            fold_model = copy.deepcopy(model)
            fold_model.head.shrink = float(shrink)
            fold_model.head.fit_clusters(*_subset(clusters, targets, keep))
            results += fuse_batch(fold_model.eval(), subset_batch(sub, held_out))[0]
        aps.append(CocoEvaluation(coco, results, sub.img_ids, ap_only=True).ap(
            np.arange(len(sub.img_ids))))
    best = max(range(len(grid)), key=lambda k: (round(aps[k], 6), k))
    return float(grid[best]), aps


def theta_wbf_fold(batch: MemberBatch, coco: COCO, folds: list, k: int, seed: int,
                   work_dir: str, anchor: Optional[Sequence[float]] = None) -> dict:
    """Θ on the WBF form on fold ``k`` of ``folds`` (``(train, held-out)`` positions of
    the partition ``seed``): the anchor (``anchor``, or fitted here with
    :data:`ANCHOR_OPTIONS` through the Runner), ``shrink`` by :func:`choose_shrink`, then
    the Runner's fit of :data:`THETA_WBF`. Returns the held-out ``results``, ``fit_s``
    (all three steps), ``shrink`` and ``theta``."""
    t0 = time.perf_counter()
    if anchor is None:
        _, _, model = runner_fold(WEIGHTS, batch, osp.join(work_dir, 'anchor'), k,
                                  len(folds), seed, ANCHOR_OPTIONS)
        anchor = model.head.member_weights().tolist()
    train_ids = [batch.img_ids[i] for i in folds[k][0]]
    shrink, _ = choose_shrink(batch, coco, train_ids, build_theta_wbf(THETA_WBF, anchor, 1.0),
                              seed=seed)
    results, _, model = runner_fold(THETA_WBF, batch, work_dir, k, len(folds), seed, {
        'model.head.anchor_weights': list(anchor), 'model.head.shrink': shrink,
        'custom_hooks': []})
    return dict(results=results, fit_s=time.perf_counter() - t0, shrink=shrink,
                theta=model.head.theta().tolist())
