"""Test-time augmentation merges on the embedded data: each detector's ``-hflip`` file is
its flipped view (boxes already back in the original image), out of fold on val.

    python tools/analysis_tools/tta_out_of_fold.py --out-md work_dirs/tta/tta.md

Per detector (centernet-512, nanodet-416, yolofastestv2-352), COCO AP on the 80 val images of:

- the detector alone (one view);
- mmdet's merge: mmdet's own ``DetTTAModel.merge_preds`` run on the two views (class-aware
  batched NMS at IoU 0.5, 100 per image: ``tta_cfg`` of mmdet's ``tools/test.py --tta``
  default and of its ``retinanet_tta.py``);
- ``EnsembleTTAModel``'s default (WBF, ``iou_thr=0.55``, ``conf_type='avg'``);
- WBF with ``iou_thr`` and ``conf_type`` chosen per fold on its training images (the grid
  :data:`TUNE_IOU` x :data:`TUNE_CONF`, by COCO AP), applied to the held-out fold;
- ``EnsembleTTAModel`` with learned view weights: the learned-weights ensemble (the first
  config of configs/learned/, as ``fit_ensemble.py --method learned``) fit by mmengine's
  Runner on the training folds of the two views, its weights applied to the held-out fold
  (seeded 5-fold partition of ``cross_val.py``): the weights alone (WBF 0.55 / avg), and
  the config's default, weights and WBF thresholds chosen by its inner-CV search (what
  ``EnsembleTTAModel(weights_from=...)`` applies from a ``fit_ensemble.py`` checkpoint).
  Scores stay raw.

Each row's AP minus mmdet's merge comes with its 95% paired bootstrap interval over images.
The fixed rules (NMS, WBF) have nothing to fit: their out-of-fold results are their results.
"""
import argparse
import glob
import os
import os.path as osp
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # cross_val.py, as its tools do
from cross_val import fold_config, fold_positions, train_from_cfg  # noqa: E402

from mmens.apis.member_files import (MemberBatch, load_coco, load_member_batch,  # noqa: E402
                                     member_results)
from mmens.evaluation.coco_eval import (CocoEvaluation, paired_bootstrap,  # noqa: E402
                                        results_to_coco)
from mmens.utils.cli import run_cli  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
DETECTORS = ('centernet-512', 'nanodet-416', 'yolofastestv2-352')
MMDET = 'mmdet DetTTAModel (NMS 0.5)'
#: the grid of the row whose WBF settings are chosen on the training folds
TUNE_IOU = (0.45, 0.55, 0.65, 0.75)
TUNE_CONF = ('avg', 'max', 'box_and_model_avg', 'absent_model_aware_avg')
LEARNED = sorted(glob.glob(osp.join(ROOT, 'configs', 'learned', '*.py')))[0]


class Views(nn.Module):
    """The module a TTA model wraps; here the views come from files (never called)."""

    def test_step(self, data):
        raise RuntimeError('the views are read from files')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='TTA merges of the embedded -hflip views')
    p.add_argument('--detectors', nargs='+', default=list(DETECTORS))
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0, help='fold partition seed')
    p.add_argument('--bootstrap', type=int, default=1000)
    p.add_argument('--out-md', help='write the markdown table here')
    return p.parse_args(argv)


def view_samples(batch: MemberBatch, positions: Sequence[int]) -> List[list]:
    """Per image of ``positions``, one ``DetDataSample`` per view (member) with its
    predictions in the original image (``flip=False``: the files are already flipped back)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    p = batch.packed
    key = p['images'] * len(batch.names) + p['members']  # [M]
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=len(batch.img_ids) * len(batch.names))
    starts = torch.cumsum(counts, 0) - counts
    out = []
    for i in positions:  # per image and view, not per box
        w, h = p['image_sizes'][i].tolist()
        views = []
        for v in range(len(batch.names)):
            c = i * len(batch.names) + v
            idx = order[starts[c]:starts[c] + counts[c]]
            s = DetDataSample(metainfo=dict(ori_shape=(int(h), int(w)), flip=False,
                                            flip_direction=None, img_id=batch.img_ids[i]))
            s.pred_instances = InstanceData(bboxes=p['bboxes'][idx].float(),
                                            scores=p['scores'][idx].float(),
                                            labels=p['labels'][idx].long())
            views.append(s)
        out.append(views)
    return out


def merged_results(tta: nn.Module, batch: MemberBatch, positions: Sequence[int]) -> List[dict]:
    """COCO results of ``tta.merge_preds`` on the images of ``positions``."""
    merged = tta.merge_preds(view_samples(batch, positions))
    parts = [(m.pred_instances.bboxes, m.pred_instances.scores, m.pred_instances.labels,
              torch.full((len(m.pred_instances.scores), ), int(i), dtype=torch.long))
             for m, i in zip(merged, positions)]
    boxes, scores, labels, images = (torch.cat(c) for c in zip(*parts))
    return results_to_coco(boxes, scores, labels, images, batch.img_ids, batch.cat_ids)


def learned_weights(names: List[str], work_dir: str, fold: int, folds: int, seed: int,
                    search: bool) -> tuple:
    """The view weights the learned-weights ensemble learns on a fold's training images
    (the Runner, as tools/train.py and fit_ensemble.py), and its WBF thresholds: those of
    its threshold search (inner CV on the training images) with ``search``, else 0.55 /
    avg."""
    options = {'model.members': names, 'train_dataloader.dataset.members': names,
               'custom_hooks': [dict(type='FusionSearchHook')] if search else []}
    cfg = fold_config(LEARNED, osp.join(work_dir, f'fold{fold}{"s" if search else ""}'),
                      dict(num_folds=folds, index=fold, seed=seed), options)
    model, _ = train_from_cfg(cfg)
    return model.head.member_weights().tolist(), model.fusion_cfg()


def learned_results(batch: MemberBatch, folds: list, args, work_dir: str,
                    search: bool) -> tuple:
    """Out-of-fold results of WBF with view weights (and, with ``search``, thresholds)
    learned on each fold's training images, and a note of what was learned."""
    from mmens.models.tta import EnsembleTTAModel
    results, weights, chosen = [], [], []
    for k, (_, test) in enumerate(folds):
        w, fusion = learned_weights(batch.names, work_dir, k, args.folds, args.seed, search)
        weights.append(w)
        chosen.append(f"{fusion['iou_thr']}/{fusion['conf_type']}")
        results += merged_results(EnsembleTTAModel(Views(), weights=w, fusion=fusion), batch,
                                  test.tolist())
        print(f'{batch.names[0]}: fold {k + 1}/{len(folds)} weights '
              f'{np.round(w, 3).tolist()} {fusion}', file=sys.stderr)
    mean = np.mean(weights, 0)
    return results, (f'mean weights {mean[0]:.2f} / {mean[1]:.2f}'
                     + (f"; thresholds per fold: {', '.join(chosen)}" if search else ''))


def tuned_results(coco, batch: MemberBatch, folds: list) -> tuple:
    """Out-of-fold results of WBF with ``iou_thr`` and ``conf_type`` chosen per fold by
    the AP on its training images (a grid; the held-out fold never takes part)."""
    from mmens.models.tta import EnsembleTTAModel
    everything = list(range(len(batch.img_ids)))
    grid = [dict(iou_thr=t, conf_type=c) for t in TUNE_IOU for c in TUNE_CONF]
    merged = [merged_results(EnsembleTTAModel(Views(), fusion=dict(method='wbf', **g)),
                             batch, everything) for g in grid]
    evals = [CocoEvaluation(coco, r, ap_only=True) for r in merged]
    results, chosen = [], []
    for train, test in folds:
        best = int(np.argmax([ev.ap(train) for ev in evals]))
        chosen.append(best)
        ids = {batch.img_ids[i] for i in test.tolist()}
        results += [r for r in merged[best] if r['image_id'] in ids]
    picks = ', '.join(f"{grid[b]['iou_thr']}/{grid[b]['conf_type']}" for b in chosen)
    return results, f'chosen per fold: {picks}'


def detector_rows(coco, det: str, args, work_dir: str) -> List[dict]:
    """The rows of one detector: its AP alone and of each merge, with intervals."""
    from mmdet.models.test_time_augs import DetTTAModel
    from mmengine.config import ConfigDict

    from mmens.models.tta import EnsembleTTAModel
    names = [det, det + '-hflip']
    files = [osp.join(DATA, 'predictions', 'val', n + '.json') for n in names]
    batch = load_member_batch(coco, files, names)
    everything = list(range(len(batch.img_ids)))
    folds = fold_positions(batch.img_ids, args.folds, args.seed)
    mmdet = DetTTAModel(module=Views(), tta_cfg=ConfigDict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    results = {
        'one view (no TTA)': (member_results(batch.members[0]), ''),
        MMDET: (merged_results(mmdet, batch, everything), ''),
        'EnsembleTTAModel (WBF 0.55/avg)': (
            merged_results(EnsembleTTAModel(Views()), batch, everything), ''),
        'EnsembleTTAModel (WBF, iou_thr/conf_type from the training folds)': tuned_results(
            coco, batch, folds),
        'EnsembleTTAModel (WBF 0.55/avg, learned view weights)': learned_results(
            batch, folds, args, work_dir, search=False),
        'EnsembleTTAModel (learned view weights, thresholds by FusionSearchHook)':
            learned_results(batch, folds, args, work_dir, search=True)}
    evals = {k: CocoEvaluation(coco, v[0]) for k, v in results.items()}
    rows = []
    for name, ev in evals.items():
        d = paired_bootstrap(ev, evals[MMDET], args.bootstrap)
        rows.append(dict(detector=det, merge=name, AP=ev.metrics()['AP'],
                         note=results[name][1], **d))
    return rows


def table(rows: List[dict], command: str) -> str:
    lines = [f'`{command}`', '',
             '| detector | merge | AP | ΔAP vs mmdet [95% CI] | P(better) |',
             '|---|---|---:|---|---:|']
    for r in rows:
        ref = r['merge'] == MMDET
        delta = '—' if ref else (f"{100 * r['diff']:+.2f} [{100 * r['lo']:+.2f}, "
                                 f"{100 * r['hi']:+.2f}]")
        merge = r['merge'] + (f" ({r['note']})" if r['note'] else '')
        lines.append(f"| {r['detector']} | {merge} | {100 * r['AP']:.2f} | {delta} | "
                     f"{'—' if ref else format(r['p_better'], '.2f')} |")
    return '\n'.join(lines)


def main(argv: Optional[list] = None) -> None:
    args = parse_args(argv)
    unknown = [d for d in args.detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f'--detectors: {unknown} are not among {list(DETECTORS)}')
    from mmens.utils import register_all_modules
    register_all_modules()
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for det in args.detectors:
            rows += detector_rows(coco, det, args, work_dir)
            print(f'{det} done ({time.perf_counter() - t0:.0f} s)', file=sys.stderr)
    command = 'python tools/analysis_tools/tta_out_of_fold.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    text = table(rows, command.strip())
    print(text)
    if args.out_md:
        os.makedirs(osp.dirname(osp.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    run_cli(main)
