"""Does e2e-CEL's training loss rank fixed member subsets the way COCO AP does?

    python tools/analysis_tools/cel_loss_vs_ap.py

e2e-CEL learns by lowering a surrogate loss of the fused output of the members it selects
(``CELDetector.selection_loss``: a ranking or BCE term plus a box term). Its
selections can only be as good as that loss's agreement with AP. On the embedded val split
(all images, in sample: a diagnostic of the objective, not a result), this scores every
fixed subset of the members both ways, WBF-fused as in the budget report, and prints per
loss variant the Spearman correlation of -loss with AP over all subsets and, per subset
size k, the AP of the subset the loss prefers next to the AP-best one.
"""
import argparse
import glob
import itertools
import json
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmens  # noqa: F401  (registers the mmens modules)
import numpy as np
import torch
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

from mmens.apis import load_coco, load_member_batch
from mmens.experiments.cel_budget import cel_config, fuse_selected
from mmens.experiments.loss_check import fixed_subset_losses, training_inputs
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.utils import run_cli

DATA = osp.join(ROOT, 'data', 'coco_real')
#: name -> CELDetector.train_cfg overrides
VARIANTS = {
    'rank, each positive the same': dict(loss_cls='rank', rank_class_balanced=False),
    'rank, each class the same': dict(loss_cls='rank', rank_class_balanced=True),
    'bce': dict(loss_cls='bce'),
    'balanced_bce': dict(loss_cls='balanced_bce'),
    'rank, each class the same; no box term': dict(loss_cls='rank', rank_class_balanced=True,
                                                   loss_box=0.0),
    'rank, each class the same; IoU thresholds missed': dict(
        loss_cls='rank', rank_class_balanced=True, box_loss='iou_thresholds'),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='e2e-CEL training loss against AP, fixed subsets')
    p.add_argument('--config', default=sorted(glob.glob(osp.join(ROOT, 'configs', 'cel',
                                                                  '*.py')))[0])
    p.add_argument('--seed', type=int, default=0, help='negatives sampled by the rank loss')
    p.add_argument('--max-images', type=int, help='use the first images only (smoke runs)')
    return p.parse_args(argv)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties; scipy's)."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).correlation)


def main(argv=None) -> None:
    args = parse_args(argv)
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = cel_config(args.config)
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        names = [m['name'] for m in json.load(f)]
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{n}.json')
                                     for n in names], names)
    if args.max_images is not None:
        if args.max_images < 1:
            raise ValueError(f'--max-images must be >= 1, got {args.max_images}')
        from mmens.experiments.cross_val import subset_batch
        batch = subset_batch(batch, batch.img_ids[:args.max_images])
    cfg.train_dataloader.dataset.img_ids = list(batch.img_ids)
    model = MODELS.build(cfg.model)
    if sorted(model.members) != sorted(names):
        raise ValueError(f'{args.config}: its members {list(model.members)} are not those of '
                         f'data/coco_real {names}')
    n, num_img = len(names), len(batch.img_ids)
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    ap = []
    bar = ProgressBar(len(subsets))
    for s in subsets:
        sel = torch.zeros(num_img, n)
        sel[:, list(s)] = 1.0
        ap.append(CocoEvaluation(coco, fuse_selected(batch, sel, **model.fusion_cfg),
                                 batch.img_ids).metrics()['AP'])
        bar.update()
    clusters, targets = training_inputs(model, cfg.train_dataloader.dataset)
    losses, cls = {}, {}
    base_cfg = dict(model.train_cfg, loss_box=1.0, box_loss='l1')  # each variant from here
    for v, over in VARIANTS.items():
        model.train_cfg = dict(base_cfg, **over)
        # the same sampled negatives (seed) for every subset
        terms = fixed_subset_losses(model, clusters, targets, subsets, names, args.seed)
        cls[v], losses[v] = terms['loss_cls'], terms['loss_cls'] + terms['loss_box']
    ap = np.asarray(ap)
    sizes = np.array([len(s) for s in subsets])
    head = ' | '.join(f'k={k}' for k in range(1, n))
    print(f'\n{num_img} val images, {len(subsets)} fixed subsets. Spearman(-loss, AP) of '
          'loss_cls alone and of the training loss (cls + box); per k: AP of the subset the '
          'training loss prefers (AP-best)')
    print(f'| loss_cls | Spearman, cls | Spearman, cls + box | {head} |')
    print('|---|---|---|' + '---|' * (n - 1))
    for v, vals in losses.items():
        cells = []
        for k in range(1, n):
            idx = np.flatnonzero(sizes == k)
            chosen, best = idx[np.argmin(vals[idx])], idx[np.argmax(ap[idx])]
            cells.append(f'{100 * ap[chosen]:.1f} ({100 * ap[best]:.1f})')
        print(f'| {v} | {spearman(-cls[v], ap):.3f} | {spearman(-vals, ap):.3f} | '
              + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    run_cli(main)
