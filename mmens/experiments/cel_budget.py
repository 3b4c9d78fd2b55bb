"""AP against member-compute budget: e2e-CEL, best fixed subset, random subset, all members.

Every method is scored out of fold on one split: e2e-CEL is trained on the training folds
(the ``tools/train.py`` path) and the best fixed subset is chosen on the same training folds
(exhaustively over subsets); both are applied to the held-out fold.
"""
import csv
import json
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config
from pycocotools.coco import COCO

from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.ops.knapsack import knapsack, topk_mask
from mmens.apis.member_files import MemberBatch
from mmens.models.detectors.cel_warm_start import feasible_fixed_subsets
from .cel_out_of_fold import cel_out_of_fold, fuse_selected
from .cross_val import fold_positions


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
    """Out-of-fold AP and mean member compute per image, per budget setting and method.

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
        dict with ``rows`` (setting, method, AP, seconds, members per image, ``differs``:
        the fraction of images whose selection is not the best fixed subset of their fold) and
        ``frequency`` (setting → how often each member was selected by e2e-CEL) and
        ``cel_results`` (setting → e2e-CEL's out-of-fold COCO results, fit seconds per
        fold, mean member seconds per image), ``best_fixed`` (setting → each fold's best
        fixed subset) and ``warm_starts`` (setting → the subset each fold's training
        started from, which should be the same).
    """
    cel_config(config)  # fail before any work
    fusion_cfg = dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg', **(fusion_cfg or {}))
    say = progress or (lambda s: None)
    sec = np.asarray(seconds, dtype=np.float64)
    n, img_ids = len(batch.names), batch.img_ids
    folds = fold_positions(img_ids, num_folds, seed)
    feasible = {setting_name(s): feasible_fixed_subsets(
        n, k=s.get('k'), costs=None if 'k' in s else sec, budget=s.get('budget'))
        for s in settings}
    for name, ok in feasible.items():
        if not ok:
            raise ValueError(f'budget {name}: no subset of members fits')
    subsets = sorted({s for ok in feasible.values() for s in ok} | {tuple(range(n))},
                     key=lambda s: (len(s), s))
    say(f'scoring {len(subsets)} fixed subsets')
    evals = {}
    for s in subsets:
        sel = torch.zeros(len(img_ids), n)
        sel[:, list(s)] = 1.0
        evals[s] = CocoEvaluation(coco, fuse_selected(batch, sel, **fusion_cfg), img_ids,
                                  ap_only=True)
    rows, frequency, cel_results, warm, best_fixed = [], {}, {}, {}, {}
    for setting in settings:
        name = setting_name(setting)
        ok = feasible[name]
        # best fixed subset, chosen per training fold, applied to its held-out fold
        best = [best_subset(ok, evals, train) for train, _ in folds]
        chosen = fixed_selection(best, folds, len(img_ids), n)  # [I, N]
        fixed = fuse_selected(batch, torch.as_tensor(chosen, dtype=torch.float32),
                              **fusion_cfg)
        rand = random_selection(len(img_ids), setting, sec, seed)
        random_res = fuse_selected(batch, rand, **fusion_cfg)
        say(f'{name}: training e2e-CEL, {num_folds} folds')
        cel_res, cel_sel, per_fold = cel_out_of_fold(
            batch, config, setting, folds, osp.join(work_root, name.replace(' ', '')),
            seed, fusion_cfg, cfg_options, coco,
            None if on_fold is None else lambda k, out, name=name: on_fold(name, k, out))
        warm[name] = [f['warm_start'] for f in per_fold]
        fit_s = sum(f['fit_s'] for f in per_fold)
        fixed_in = [evals[b].ap(train) for b, (train, _) in zip(best, folds)]
        methods = [('e2e-CEL', cel_res, cel_sel,
                    dict(train_AP=float(np.mean([f['train_AP'] for f in per_fold])))),
                   ('best fixed subset', fixed, chosen,
                    dict(train_AP=float(np.mean(fixed_in)))),
                   ('random subset', random_res, rand.numpy(), None)]
        ev = {}
        for method, res, sel, extra in methods:
            ev[method] = CocoEvaluation(coco, res, img_ids)
            sel = np.asarray(sel)
            rows.append(dict(setting=name, method=method, AP=ev[method].metrics()['AP'],
                             seconds=float((sel @ sec).mean()),
                             members=float(sel.sum(1).mean()),
                             differs=float((sel != chosen).any(1).mean()), **(extra or {})))
        b = paired_bootstrap(ev['e2e-CEL'], ev['best fixed subset'], 500, seed)
        rows[-len(methods)].update(delta_vs_fixed=b['diff'], ci_lo=b['lo'], ci_hi=b['hi'])
        frequency[name] = cel_sel.mean(0).tolist()
        cel_results[name] = dict(results=cel_res, fit_s=fit_s / num_folds,
                                 member_s=float((cel_sel @ sec).mean()))
        best_fixed[name] = [list(b) for b in best]
    rows.append(dict(setting='all', method='all-member fusion',
                     AP=evals[tuple(range(n))].ap(np.arange(len(img_ids))),
                     seconds=float(sec.sum()),
                     members=float(n)))
    return dict(rows=rows, frequency=frequency, members=list(batch.names),
                cel_results=cel_results, best_fixed=best_fixed,
                warm_starts=warm)


def best_subset(feasible_subsets: List[tuple], evals: Dict[tuple, CocoEvaluation],
                positions: np.ndarray) -> tuple:
    """The feasible fixed subset with the highest AP on ``positions`` (ties: the first)."""
    return max(feasible_subsets, key=lambda s: evals[s].ap(positions))


def fixed_selection(best: List[tuple], folds: list, num_images: int, num_members: int
                    ) -> np.ndarray:
    """``[I, N]`` 0/1: on each fold's held-out images, that fold's subset ``best[k]``."""
    chosen = np.zeros((num_images, num_members))
    for b, (_, test) in zip(best, folds):
        chosen[np.ix_(test, list(b))] = 1.0
    return chosen


def write_budget_outputs(report: dict, work_dir: str) -> str:
    """Markdown and CSV tables, JSON, and the two plots; returns the Markdown table."""
    from mmens.visualization.plots import plot_budget_curve, plot_selection_frequency
    rows = report['rows']
    lines = ['| budget | method | AP | ΔAP vs best fixed subset [95% CI] | member s / image '
             '| members / image | images off the best fixed subset | AP on its training folds |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        delta = (f"{100 * r['delta_vs_fixed']:+.1f} [{100 * r['ci_lo']:+.1f}, "
                 f"{100 * r['ci_hi']:+.1f}]" if 'delta_vs_fixed' in r else '')
        lines.append(f"| {r['setting']} | {r['method']} | {100 * r['AP']:.1f} | {delta} | "
                     f"{r['seconds']:.3f} | {r['members']:.2f} | "
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
