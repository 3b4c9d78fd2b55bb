"""AP against member-compute budget: e2e-CEL, best fixed subset, random subset, all members.

Every method is scored out of fold on one split: e2e-CEL is trained on the training folds
(the ``tools/train.py`` path) and the best fixed subset is chosen on the same training folds
(exhaustively over subsets); both are applied to the held-out fold.
"""
import csv
import itertools
import json
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from pycocotools.coco import COCO

from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.ops.knapsack import knapsack, topk_mask
from .cel_out_of_fold import cel_out_of_fold, fuse_selected, warm_start  # noqa: F401
from .cross_val import fold_positions, subset_batch
from mmens.apis.member_files import MemberBatch


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


def feasible(subset: Tuple[int, ...], setting: dict, seconds: np.ndarray) -> bool:
    """A subset meets ``setting`` (``{'k': k}`` exactly k members, or ``{'budget': s}``)."""
    if 'k' in setting:
        return len(subset) == setting['k']
    return float(seconds[list(subset)].sum()) <= setting['budget'] + 1e-9


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
                  cfg_options: Optional[dict] = None, warm_start_gap: float = 0.25,
                  gate_folds: int = 0, loss_check: bool = False, bags: int = 1,
                  progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Out-of-fold AP and mean member compute per image, per budget setting and method.

    Args:
        batch (MemberBatch): all members on the split's images.
        seconds (Sequence[float]): seconds per image of each member (batch order).
        settings (Sequence[dict]): ``{'k': k}`` or ``{'budget': seconds}`` each.
        config (str): the e2e-CEL config; its selector is set per setting, and its selection
            net starts at the best fixed subset of the training folds.
        cfg_options (dict, optional): overrides of that config.
        warm_start_gap (float): e2e-CEL starts from ``ĉ = +gap/2`` for the members of the
            best fixed subset of its training folds and ``ĉ = -gap/2`` for the others, so
            that the exact top-k or knapsack on the warm start is that subset (with positive
            scores for all, a knapsack would also add every other member that still fits).
        gate_folds (int): when ``>= 2``, also report ``e2e-CEL, gated``: on each outer fold,
            e2e-CEL is kept only if it beats the best fixed subset in a ``gate_folds``-fold
            cross-validation inside that fold's training images (:func:`inner_gate`), and
            the fold falls back to the best fixed subset otherwise.
        bags (int): e2e-CEL trains this many selection nets per fold, each on a random 80%
            of the fold's training images, and selects by their mean ĉ (1: one net).
        loss_check (bool): also report ``e2e-CEL, loss-checked``: on each outer fold,
            e2e-CEL is kept only if its training loss prefers that fold's best fixed subset
            among the feasible fixed subsets on the fold's training images (its loss agrees
            with AP there), and the fold falls back to the best fixed subset otherwise.

    Returns:
        dict with ``rows`` (setting, method, AP, seconds, members per image, ``differs``:
        the fraction of images whose selection is not the best fixed subset of their fold) and
        ``frequency`` (setting → how often each member was selected by e2e-CEL) and
        ``cel_results`` (setting → e2e-CEL's out-of-fold COCO results, fit seconds per
        fold, mean member seconds per image, and with a gate the same under ``gated``).
    """
    cel_config(config)  # fail before any work
    fusion_cfg = dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg', **(fusion_cfg or {}))
    say = progress or (lambda s: None)
    sec = np.asarray(seconds, dtype=np.float64)
    n, img_ids = len(batch.names), batch.img_ids
    folds = fold_positions(img_ids, num_folds, seed)
    smallest = min(len(train) for train, _ in folds)
    if gate_folds != 0 and not 2 <= gate_folds <= smallest:
        raise ValueError(f'gate_folds must be 0 (off) or 2..{smallest} (the images of the '
                         f'smallest training fold), got {gate_folds}')
    if bags < 1 or (bags > 1 and loss_check):
        raise ValueError(f'bags must be >= 1 (1: one net per fold) and 1 with the loss check, '
                         f'got {bags}')
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    say(f'scoring all {len(subsets)} fixed subsets')
    evals = {}
    for s in subsets:
        sel = torch.zeros(len(img_ids), n)
        sel[:, list(s)] = 1.0
        evals[s] = CocoEvaluation(coco, fuse_selected(batch, sel, **fusion_cfg), img_ids)
    all_members = tuple(range(n))
    rows, frequency, cel_results = [], {}, {}
    for setting in settings:
        name = setting_name(setting)
        ok = [s for s in subsets if feasible(s, setting, sec)]
        if not ok:
            raise ValueError(f'budget {name}: no subset of members fits')
        # best fixed subset, chosen per training fold, applied to its held-out fold
        best = [best_subset(ok, evals, train) for train, _ in folds]
        chosen = fixed_selection(best, folds, len(img_ids), n)  # [I, N]
        fixed = fuse_selected(batch, torch.as_tensor(chosen, dtype=torch.float32),
                              **fusion_cfg)
        rand = random_selection(len(img_ids), setting, sec, seed)
        random_res = fuse_selected(batch, rand, **fusion_cfg)
        say(f'{name}: training e2e-CEL, {num_folds} folds')
        in_sample: List[float] = []
        checks: Optional[List[dict]] = [] if loss_check else None
        cel_res, cel_sel, fit_s = cel_out_of_fold(
            batch, config, setting, folds, best, osp.join(work_root, name.replace(' ', '')),
            num_folds, seed, fusion_cfg, cfg_options, warm_start_gap, coco, in_sample,
            checks, ok, bags)
        fixed_in = [evals[b].ap(train) for b, (train, _) in zip(best, folds)]
        methods = [('e2e-CEL', cel_res, cel_sel, dict(train_AP=float(np.mean(in_sample))))]
        if loss_check:
            c_res, c_sel = gated(cel_res, cel_sel, fixed, chosen, folds, checks, img_ids)
            methods.append(('e2e-CEL, loss-checked', c_res, c_sel,
                            dict(kept=sum(c['keep'] for c in checks), gate=checks)))
        if gate_folds >= 2:
            keep = []
            for k, (train, _) in enumerate(folds):
                say(f'{name}: fold {k}: inner {gate_folds}-fold gate')
                keep.append(inner_gate(
                    batch, coco, evals, ok, train, config, setting,
                    osp.join(work_root, name.replace(' ', ''), f'gate{k}'), gate_folds, seed,
                    fusion_cfg, cfg_options, warm_start_gap, bags))
            g_res, g_sel = gated(cel_res, cel_sel, fixed, chosen, folds, keep, img_ids)
            methods.append(('e2e-CEL, gated', g_res, g_sel,
                            dict(kept=sum(g['keep'] for g in keep), gate=keep)))
        methods += [('best fixed subset', fixed, chosen,
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
        for r in rows[-len(methods):]:
            if r['method'].startswith('e2e-CEL'):
                b = paired_bootstrap(ev[r['method']], ev['best fixed subset'], 500, seed)
                r.update(delta_vs_fixed=b['diff'], ci_lo=b['lo'], ci_hi=b['hi'])
        frequency[name] = cel_sel.mean(0).tolist()
        cel_results[name] = dict(results=cel_res, fit_s=fit_s / num_folds,
                                 member_s=float((cel_sel @ sec).mean()))
        if gate_folds >= 2:
            cel_results[name]['gated'] = dict(
                results=g_res, member_s=float((g_sel @ sec).mean()),
                fit_s=(fit_s + sum(g['fit_s'] for g in keep)) / num_folds)
    rows.append(dict(setting='all', method='all-member fusion',
                     AP=evals[all_members].metrics()['AP'], seconds=float(sec.sum()),
                     members=float(n)))
    return dict(rows=rows, frequency=frequency, members=list(batch.names),
                cel_results=cel_results)


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


def inner_gate(batch: MemberBatch, coco: COCO, evals: Dict[tuple, CocoEvaluation],
               feasible_subsets: List[tuple], train: np.ndarray, config: str, setting: dict,
               work_root: str, num_folds: int, seed: int, fusion_cfg: dict,
               cfg_options: Optional[dict] = None, warm_start_gap: float = 0.25,
               bags: int = 1) -> dict:
    """Does e2e-CEL beat the best fixed subset inside one outer training fold?

    The outer fold's training images (``train``, positions in ``batch``) are split into
    ``num_folds`` inner folds; on each, the best feasible fixed subset is chosen on the
    inner training images and e2e-CEL is trained from it (as :func:`cel_out_of_fold`), and
    both are applied to the inner held-out images. The outer held-out fold is never read.

    Returns:
        dict: inner out-of-fold ``cel_ap`` and ``fixed_ap``, ``keep`` (``cel_ap >
        fixed_ap``: keep e2e-CEL on this outer fold) and ``fit_s`` (the inner trainings).
    """
    train = np.sort(train)  # sub-batch position k is batch position train[k]
    sub = subset_batch(batch, [batch.img_ids[i] for i in train])
    inner = fold_positions(sub.img_ids, num_folds, seed)
    best = [best_subset(feasible_subsets, evals, train[tr]) for tr, _ in inner]
    cel_res, _, fit_s = cel_out_of_fold(sub, config, setting, inner, best, work_root,
                                        num_folds, seed, fusion_cfg, cfg_options,
                                        warm_start_gap, bags=bags)
    chosen = fixed_selection(best, inner, len(sub.img_ids), len(batch.names))
    fixed_res = fuse_selected(sub, torch.as_tensor(chosen, dtype=torch.float32),
                              **fusion_cfg)
    cel_ap = CocoEvaluation(coco, cel_res, sub.img_ids).metrics()['AP']
    fixed_ap = CocoEvaluation(coco, fixed_res, sub.img_ids).metrics()['AP']
    return dict(cel_ap=cel_ap, fixed_ap=fixed_ap, keep=bool(cel_ap > fixed_ap), fit_s=fit_s)


def gated(cel_res: List[dict], cel_sel: np.ndarray, fixed_res: List[dict],
          fixed_sel: np.ndarray, folds: list, gates: List[dict], img_ids: Sequence[int]
          ) -> Tuple[List[dict], np.ndarray]:
    """Per outer fold, e2e-CEL's results and selection where its gate kept it, else the
    best fixed subset's (``folds``: (train, held-out) positions in ``img_ids``)."""
    results, selection = [], np.array(fixed_sel, dtype=np.float64)
    for (_, test), g in zip(folds, gates):
        ids = {img_ids[i] for i in test}
        results += [r for r in (cel_res if g['keep'] else fixed_res) if r['image_id'] in ids]
        if g['keep']:
            selection[test] = cel_sel[test]
    return results, selection


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
        method = (f"{r['method']} (e2e-CEL kept on {r['kept']}/{len(r['gate'])} folds)"
                  if 'gate' in r else r['method'])
        lines.append(f"| {r['setting']} | {method} | {100 * r['AP']:.1f} | {delta} | "
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
