"""Out-of-fold AP against member-compute budget on the embedded val split (e2e-CEL issue).

    python tools/analysis_tools/cel_budget.py --work-dir work_dirs/cel_budget

For k = 1..N-1 members (unit costs) and time budgets (default 0.2 s and 0.4 s per image;
member seconds from ``members.json``) it reports e2e-CEL (trained per fold with
``tools/train.py``'s Runner path), the best fixed subset chosen on the same training folds
(exhaustive), the two per-image oracles of ``cel_oracle.py`` (the ceilings of any selector
among the same subsets), a random subset, and all-member fusion; all fuse with equal-weight
WBF. e2e-CEL's seconds are what it runs per image: its probes, the members it selects (every
member when its net reads them all: the k-mode's meta-features) and its selection net; a
fixed subset's are its members'. Writes ``budget.md``, ``budget.csv``, ``budget.json``,
``ap_vs_budget.png`` and ``selection_frequency.png`` into the work dir.

Every method is scored out of fold on one split: e2e-CEL is trained on the training folds
(the ``tools/train.py`` path) and the best fixed subset is chosen on the same training folds
(exhaustively over subsets); both are applied to the held-out fold.
"""
import argparse
import csv
import glob
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from cel_oracle import SubsetTables, greedy_oracle, per_image_oracle  # helper modules
from cel_out_of_fold import cel_out_of_fold, fuse_selected  # next to this tool
from cross_val import fold_positions, subset_batch
from mmengine.config import Config, DictAction
from pycocotools.coco import COCO

from mmens.apis import load_coco, load_member_batch
from mmens.apis.member_files import MemberBatch
from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.models.detectors.cel_warm_start import feasible_fixed_subsets
from mmens.ops.knapsack import knapsack, topk_mask
from mmens.utils import run_cli
from mmens.utils.progress import Progress

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')


def cel_config(path: str) -> Config:
    """Load an e2e-CEL training config; a ValueError names a missing file or another model."""
    if not osp.isfile(path):
        raise ValueError(f'config {path} does not exist')
    cfg = Config.fromfile(path)
    kind = cfg.get('model', {}).get('type')
    if kind != 'CELDetector' or not cfg.get('train_dataloader'):
        raise ValueError(f"{path} is not an e2e-CEL training config (model type {kind!r}, "
                         "needs 'CELDetector' and a train_dataloader)")
    return cfg


def random_selection(num_images: int, setting: dict, seconds: np.ndarray,
                     seed: int = 0) -> torch.Tensor:
    """A random feasible subset per image ``[I, N]``: k random members, or the knapsack of
    uniform random member values (a random maximal subset under the budget)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(num_images, len(seconds), generator=g, dtype=torch.float64)
    if 'k' in setting:
        return topk_mask(values, setting['k']).float()
    return knapsack(values, torch.as_tensor(seconds), setting['budget'], 100).float()


def setting_name(setting: dict) -> str:
    return f"k={setting['k']}" if 'k' in setting else f"{setting['budget']:g} s"


def budget_report(batch: MemberBatch, coco: COCO, seconds: Sequence[float],
                  settings: Sequence[dict], config: str, work_root: str,
                  num_folds: int = 5, seed: int = 0, fusion_cfg: Optional[dict] = None,
                  cfg_options: Optional[dict] = None,
                  progress: Optional[Callable[[str], None]] = None,
                  on_fold: Optional[Callable[[str, int, dict], None]] = None) -> Dict:
    """Out-of-fold AP and mean compute per image, per budget setting and method.

    Args:
        batch (MemberBatch): all members on the split's images.
        seconds (Sequence[float]): seconds per image of each member (batch order).
        settings (Sequence[dict]): ``{'k': k}`` or ``{'budget': seconds}`` each.
        config (str): the e2e-CEL config; its selector is set per setting. Each fold's
            model starts from the best fixed subset of its training images, which
            training computes itself (``CELDetector.warm_start``).
        cfg_options (dict, optional): overrides of that config.
        progress: called with a message at each stage; ``on_fold(setting name, k, fold
            output)`` after each e2e-CEL fit.

    Returns:
        dict with ``rows`` (setting, method, AP, seconds: the measured total per image,
        members fused per image, ``differs``: the fraction of images whose selection is
        not the best fixed subset of their fold; ΔAP to that subset with its interval),
        ``frequency`` (setting → how often e2e-CEL fused each member), ``cel_results``
        (setting → e2e-CEL's out-of-fold COCO results, fit seconds per fold, seconds per
        image), ``best_fixed`` (setting → each fold's best fixed subset), ``warm_starts``
        (setting → the subset each fold's training started from, which should be the
        same) and ``probes`` (setting → the members e2e-CEL runs on every image).
    """
    cel_config(config)  # fail before any work
    fusion_cfg = dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg', **(fusion_cfg or {}))
    say = progress or (lambda s: None)
    sec = np.asarray(seconds, dtype=np.float64)
    n = len(batch.names)
    folds = fold_positions(batch.img_ids, num_folds, seed)
    feasible = feasible_by_setting(settings, n, sec)
    subsets = sorted({s for ok in feasible.values() for s in ok} | {tuple(range(n))},
                     key=lambda s: (len(s), s))
    say(f'scoring {len(subsets)} fixed subsets')
    tables = SubsetTables(coco, [fuse_fixed(batch, s, fusion_cfg) for s in subsets],
                          batch.img_ids)
    report = dict(rows=[], frequency={}, members=list(batch.names), cel_results={},
                  best_fixed={}, warm_starts={}, probes={})
    for setting in settings:
        name = setting_name(setting)
        say(f'{name}: the best fixed subset of each fold and the oracles')
        base = subset_baselines(tables, subsets, feasible[name], folds)
        say(f'{name}: training e2e-CEL, {num_folds} folds')
        cel_res, cel_sel, per_fold = cel_out_of_fold(
            batch, config, setting, folds, osp.join(work_root, name.replace(' ', '')),
            seed, fusion_cfg, cfg_options, coco,
            None if on_fold is None else lambda k, out, name=name: on_fold(name, k, out))
        cel_cost = np.zeros(len(batch.img_ids))  # [I] seconds run per image
        for out, (_, test) in zip(per_fold, folds):
            cel_cost[np.sort(test)] = out['cost']
        methods = [('e2e-CEL', cel_res, cel_sel, cel_cost,
                    dict(train_AP=float(np.mean([f['train_AP'] for f in per_fold]))))]
        for method, choice, extra in base:
            sel = choice_selection(choice, subsets, n)
            methods.append((method, fuse_selected(batch, torch.as_tensor(
                sel, dtype=torch.float32), **fusion_cfg), sel, sel @ sec, extra))
        rand = random_selection(len(batch.img_ids), setting, sec, seed).numpy()
        methods.append(('random subset', fuse_selected(batch, torch.as_tensor(
            rand, dtype=torch.float32), **fusion_cfg), rand, rand @ sec, None))
        report['rows'] += setting_rows(coco, batch.img_ids, name, methods, seed)
        report['frequency'][name] = cel_sel.mean(0).tolist()
        report['cel_results'][name] = dict(
            results=cel_res, fit_s=sum(f['fit_s'] for f in per_fold) / num_folds,
            member_s=float(cel_cost.mean()))
        report['best_fixed'][name] = [list(subsets[c]) for c in base[0][1][
            [test[0] for _, test in folds]]]
        report['warm_starts'][name] = [f['warm_start'] for f in per_fold]
        report['probes'][name] = per_fold[0]['probes']
    report['rows'].append(dict(setting='all', method='all-member fusion',
                               AP=float(tables.fixed_ap([subsets.index(tuple(range(n)))],
                                                        np.arange(len(batch.img_ids)))[0]),
                               seconds=float(sec.sum()), members=float(n)))
    return report


def feasible_by_setting(settings: Sequence[dict], num_members: int, seconds: np.ndarray
                        ) -> Dict[str, List[tuple]]:
    """Setting name → its feasible fixed subsets; a ValueError names a setting none fits."""
    feasible = {setting_name(s): feasible_fixed_subsets(
        num_members, k=s.get('k'), costs=None if 'k' in s else seconds, budget=s.get('budget'))
        for s in settings}
    for name, ok in feasible.items():
        if not ok:
            raise ValueError(f'budget {name}: no subset of members fits')
    return feasible


def fuse_fixed(batch: MemberBatch, subset: tuple, fusion_cfg: dict) -> List[dict]:
    """WBF of the members ``subset`` on every image of ``batch``."""
    sel = torch.zeros(len(batch.img_ids), len(batch.names))
    sel[:, list(subset)] = 1.0
    return fuse_selected(batch, sel, **fusion_cfg)


def subset_baselines(tables: SubsetTables, subsets: List[tuple], feasible: List[tuple],
                     folds: list) -> List[tuple]:
    """``(method, choice [I] (index in subsets), extra columns)`` of the best fixed subset
    (chosen on each fold's training images, applied to its held-out images) and of the two
    oracles within the same feasible subsets, which start from it (so that an image moves
    only where the oracle gains)."""
    idx = np.array([subsets.index(s) for s in feasible], dtype=np.int64)
    fixed = np.zeros(tables.num_images, dtype=np.int64)
    train_ap = []
    for train, test in folds:
        aps = tables.fixed_ap(idx, train)  # [F] on the fold's training images
        fixed[test] = idx[int(aps.argmax())]  # ties: the first, as the warm start
        train_ap.append(float(aps.max()))
    return [('best fixed subset', fixed, dict(train_AP=float(np.mean(train_ap)))),
            ('oracle, by each image\'s AP', per_image_oracle(tables.per_image_ap(), idx,
                                                             fixed), None),
            ('oracle, by the dataset\'s AP', greedy_oracle(tables, idx, fixed), None)]


def choice_selection(choice: np.ndarray, subsets: List[tuple], num_members: int
                     ) -> np.ndarray:
    """``[I, N]`` 0/1 of a per-image subset index ``choice [I]``."""
    member_of = np.zeros((len(subsets), num_members))
    for j, s in enumerate(subsets):
        member_of[j, list(s)] = 1.0
    return member_of[choice]


def setting_rows(coco: COCO, img_ids: Sequence[int], name: str, methods: list,
                 seed: int) -> List[dict]:
    """One row per ``(method, results, selection [I, N], seconds [I], extra columns)``:
    AP, seconds and members fused per image, the fraction of images off the best fixed
    subset (the second method); every other method also gets its paired bootstrap
    difference to the best fixed subset."""
    rows, ev = [], []
    chosen = np.asarray(methods[1][2])
    for method, res, sel, cost, extra in methods:
        ev.append(CocoEvaluation(coco, res, img_ids))
        sel = np.asarray(sel)
        rows.append(dict(setting=name, method=method, AP=ev[-1].metrics()['AP'],
                         seconds=float(np.mean(cost)), max_seconds=float(np.max(cost)),
                         members=float(sel.sum(1).mean()),
                         differs=float((sel != chosen).any(1).mean()), **(extra or {})))
    for row, e in zip(rows, ev):
        if row['method'] != 'best fixed subset':
            b = paired_bootstrap(e, ev[1], 500, seed)
            row.update(delta_vs_fixed=b['diff'], ci_lo=b['lo'], ci_hi=b['hi'])
    return rows


def write_budget_outputs(report: dict, work_dir: str) -> str:
    """Markdown and CSV tables, JSON, and the two plots; returns the Markdown table."""
    from mmens.visualization.plots import plot_budget_curve, plot_selection_frequency
    rows = report['rows']
    lines = ['| budget | method | AP | ΔAP vs best fixed subset [95% CI] | s / image (mean, '
             'max) | members fused / image | images off the best fixed subset '
             '| AP on its training folds |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        delta = (f"{100 * r['delta_vs_fixed']:+.1f} [{100 * r['ci_lo']:+.1f}, "
                 f"{100 * r['ci_hi']:+.1f}]" if 'delta_vs_fixed' in r else '')
        most = f", {r['max_seconds']:.3f}" if 'max_seconds' in r else ''
        lines.append(f"| {r['setting']} | {r['method']} | {100 * r['AP']:.1f} | {delta} | "
                     f"{r['seconds']:.3f}{most} | {r['members']:.2f} | "
                     f"{'' if r['setting'] == 'all' else format(r['differs'], '.0%')} | "
                     f"{format(100 * r['train_AP'], '.1f') if 'train_AP' in r else ''} |")
    table = '\n'.join(lines)
    with open(osp.join(work_dir, 'budget.md'), 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    with open(osp.join(work_dir, 'budget.csv'), 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    with open(osp.join(work_dir, 'budget.json'), 'w', encoding='utf-8') as f:
        json.dump({k: v for k, v in report.items() if k != 'cel_results'}, f, indent=1)
    curves = {}
    for r in rows:
        if r['method'] == 'all-member fusion':
            continue
        curves.setdefault(r['method'], []).append((r['seconds'], r['AP']))
    every = [r for r in rows if r['method'] == 'all-member fusion'][0]
    curves['all-member fusion'] = [(every['seconds'], every['AP'])]
    plot_budget_curve(curves, osp.join(work_dir, 'ap_vs_budget.png'))
    plot_selection_frequency(report['frequency'], report['members'],
                             osp.join(work_dir, 'selection_frequency.png'))
    return table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='e2e-CEL: AP against member-compute budget')
    p.add_argument('--config', default=sorted(glob.glob(osp.join(ROOT, 'configs', 'cel',
                                                                  '*.py')))[0])
    p.add_argument('--work-dir', default='work_dirs/cel_budget')
    p.add_argument('--ks', nargs='*', type=int, help='member counts (default 1..N-1)')
    p.add_argument('--budgets', nargs='*', type=float, default=[0.2, 0.4],
                   help='seconds of member compute per image')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-images', type=int, help='use the first images only (smoke runs)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of the e2e-CEL config (key=value)')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        meta = json.load(f)
    names = [m['name'] for m in meta]
    files = [osp.join(DATA, 'predictions', 'val', f'{n}.json') for n in names]
    batch = load_member_batch(coco, files, names)
    if args.max_images:
        batch = subset_batch(batch, batch.img_ids[:args.max_images])
    ks = args.ks if args.ks is not None else list(range(1, len(names)))
    settings = [dict(k=k) for k in ks] + [dict(budget=b) for b in args.budgets]
    os.makedirs(args.work_dir, exist_ok=True)
    with Progress('e2e-CEL fits', len(settings) * args.folds) as bar:
        report = budget_report(
            batch, coco, [m['seconds_per_image'] for m in meta], settings, args.config,
            args.work_dir, args.folds, args.seed, cfg_options=args.cfg_options,
            progress=lambda s: print(f'[cel_budget] {s}', flush=True),
            on_fold=lambda name, k, out: bar.step(f"{name}, fold {k}: {out['fit_s']:.1f} s"))
    print(write_budget_outputs(report, args.work_dir))
    print(f'COCO val2017 images of data/coco_real ({len(batch.img_ids)}), out of fold '
          f'({args.folds} folds); outputs in {args.work_dir}')


if __name__ == '__main__':
    run_cli(main)
