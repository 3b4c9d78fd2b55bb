"""The main job (``make demo``): every member, the fixed rules, the learned ensembles and
e2e-CEL on the embedded real COCO data, in one out-of-fold table.

Every number is out of fold on ``val`` (80 COCO val2017 images, unseen by the members):
each method that fits anything is trained on 4/5 of the images (through mmengine's
Runner, as ``tools/train.py`` trains it) and fuses the other 1/5, five times; COCO AP is
computed once over all 80 images, with a 95% paired bootstrap interval over images of each
method's difference to WBF with grid-searched weights. The fits run in two worker
processes. Writes ``results.md``/``.csv``, the fused COCO-results of every method and the
plots into the work dir.

    python tools/analysis_tools/demo.py --work-dir work_dirs/demo

e2e-CEL's seconds per image are what it runs: its probe, the members it selects (every
member in the k-mode, whose net reads them all) and its selection net. A second table sets
each budget row against the best fixed subset within the same seconds (chosen on the training
folds) and against the per-image oracles of ``cel_oracle.py``, the ceilings of any selector.
The full e2e-CEL budget study (k = 1..5, both time budgets) is
``tools/analysis_tools/cel_budget.py``.
"""
import argparse
import csv
import json
import os
import os.path as osp
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np
import torch

from cel_budget import (choice_selection, feasible_by_setting, fuse_fixed,  # helper
                        setting_rows, subset_baselines)  # modules next to this tool
from cel_oracle import SubsetTables
from cel_out_of_fold import cel_fold, fuse_selected
from cross_val import fold_positions, runner_fold
from fusion_baselines import (grid_wbf_out_of_fold, run_ensemble_boxes_wbf, run_fixed,
                              weight_grid)
from theta_wbf import theta_wbf_fold
from mmens.apis import load_coco, load_member_batch, member_results
from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.utils import register_all_modules, run_cli
from mmens.utils.progress import Progress
from mmens.visualization import draw_examples, plot_ap_bars, plot_theta

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
REFERENCE = 'WBF, grid-searched weights'
#: the e2e-CEL rows: (table name, config in configs/cel, selector setting); a budget covers
#: the probe, the selected members and the selection net
CEL_ROWS = [('e2e-CEL, k = 3, accuracy mode (reads all 6)', 'cel_k3_6members_coco-real-val.py',
             dict(k=3)),
            ('e2e-CEL, 0.2 s budget', 'cel_small-budget-0.2s_6members_coco-real-val.py',
             dict(budget=0.2)),
            ('e2e-CEL, 0.4 s budget', 'cel_budget-0.4s_6members_coco-real-val.py',
             dict(budget=0.4))]
BUDGETS = [s['budget'] for _, _, s in CEL_ROWS if 'budget' in s]
#: the learned rows: (table name, config); the first is the default
LEARNED = [('learned WBF weights (default)', 'learned-weights_6members_coco-real-val.py'),
           ('Θ global (seed J)', 'learned_theta-global_6members_coco-real-val.py'),
           ('conditional Θ + rescoring net', 'learned_conditional_6members_coco-real-val.py'),
           # None: theta_wbf.py (anchor weights, shrink by inner CV, then its config)
           ('Θ on the WBF form', None)]
FUSION = dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg')
EXAMPLE_IMAGES = [5001, 25603]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='mmens demo on the embedded real COCO data')
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--bootstrap', type=int, default=500, help='bootstrap resamples')
    p.add_argument('--workers', type=int, default=2, help='processes for the fits')
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def quiet() -> None:
    """Two known, harmless warnings per fit would bury the progress lines."""
    warnings.filterwarnings('ignore', message='Detected call of `scheduler.step')
    warnings.filterwarnings('ignore', message='.*instance named of visualizer has been')


def load_split(split: str):
    """The COCO ground truth, the validated member batch and the member names."""
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        meta = json.load(f)
    names = [m['name'] for m in meta]
    coco = load_coco(osp.join(DATA, 'annotations', f'{split}.json'))
    files = [osp.join(DATA, 'predictions', split, f'{n}.json') for n in names]
    return coco, load_member_batch(coco, files, names), {
        m['name']: m['seconds_per_image'] for m in meta}


# -- the fits, one fold per job, in worker processes ---------------------------------------
_WORKER: dict = {}


def _init_worker(work_dir: str) -> None:
    import sys

    import torch
    torch.set_num_threads(1)  # one process per core
    # the Runner's and pycocotools' messages go to a log per process, not to the table
    os.makedirs(osp.join(work_dir, 'runs'), exist_ok=True)
    sys.stdout = sys.stderr = open(osp.join(work_dir, 'runs', f'worker-{os.getpid()}.log'),
                                   'w', buffering=1, encoding='utf-8')
    quiet()
    register_all_modules()  # default scope 'mmens', as the configs'
    _WORKER['coco'], _WORKER['batch'], _WORKER['seconds'] = load_split('val')


def _run_job(job: tuple, work_dir: str, folds: list, num_folds: int, seed: int):
    """One job: ('grid',), ('subsets',), ('learned', name, config, k) or ('cel', name,
    (config, setting), k)."""
    coco, batch = _WORKER['coco'], _WORKER['batch']
    if job[0] == 'grid':
        res, weights, sec = grid_wbf_out_of_fold(batch, coco, folds, weight_grid(batch.names))
        return dict(results=res, fit_s=sec / num_folds, weights=weights)
    if job[0] == 'subsets':
        return budget_baselines(batch, coco, folds, _WORKER['seconds'])
    kind, name, what, k = job
    if kind == 'learned' and what is None:
        out = theta_wbf_fold(batch, coco, folds, k, seed, osp.join(work_dir, 'runs', 'theta-wbf'))
        return dict(results=out['results'], fit_s=out['fit_s'], theta=out['theta'])
    if kind == 'learned':
        res, sec, model = runner_fold(osp.join(ROOT, 'configs', 'learned', what), batch,
                                      osp.join(work_dir, 'runs', what[:-3]), k, num_folds,
                                      seed)
        return dict(results=res, fit_s=sec, theta=model.head.theta_table().tolist())
    out = cel_fold(batch, osp.join(ROOT, 'configs', 'cel', what[0]), what[1], folds, k,
                   osp.join(work_dir, 'runs', 'cel', name.split(', ')[1].replace(' ', '')),
                   seed, FUSION)
    return dict(results=out['results'], fit_s=out['fit_s'], selection=out['selection'],
                cost=out['cost'], test=folds[k][1])


def budget_baselines(batch, coco, folds: list, seconds: dict) -> dict:
    """Per budget: ``(method, selection [I, N], extra columns)`` of the best fixed subset
    within the budget (chosen on the training folds) and of the two oracles."""
    sec = np.array([seconds[n] for n in batch.names])
    feasible = feasible_by_setting([dict(budget=b) for b in BUDGETS], len(sec), sec)
    subsets = sorted({s for ok in feasible.values() for s in ok}, key=lambda s: (len(s), s))
    tables = SubsetTables(coco, [fuse_fixed(batch, s, FUSION) for s in subsets],
                          batch.img_ids)
    return {b: [(method, choice_selection(choice, subsets, len(sec)), extra)
                for method, choice, extra in subset_baselines(
                    tables, subsets, feasible[f'{b:g} s'], folds)] for b in BUDGETS}


def run_fits(pool, work_dir: str, folds: list, args, seconds: dict, names: list) -> tuple:
    """Every fitted method out of fold (results, fit seconds per fold, seconds per image;
    e2e-CEL also its selection and seconds per image), and :func:`budget_baselines`."""
    # the longest first, so that the two processes finish together
    jobs = [('subsets', )] + [('cel', name, (cfg, setting), k) for name, cfg, setting in CEL_ROWS
                              for k in range(args.folds)]
    jobs += [('grid', )] + [('learned', name, cfg, k) for name, cfg in LEARNED[::-1]
                            for k in range(args.folds)]
    done: dict = {}
    with Progress(f'{len(jobs)} fits in {args.workers} processes', len(jobs)) as bar:
        futures = {pool.submit(_run_job, job, work_dir, folds, args.folds, args.seed): i
                   for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            done[i] = future.result()
            job = jobs[i]
            bar.step({'grid': REFERENCE, 'subsets': 'fixed subsets and oracles'}.get(
                job[0]) or f"{job[1]}, fold {job[3]}: {done[i]['fit_s']:.1f} s")
    done = {jobs[i][:2] + jobs[i][3:]: v for i, v in done.items()}  # (kind, name[, k])
    entries = {}
    all_s = sum(seconds.values())
    entries[REFERENCE] = dict(done[('grid', )], member_s=all_s)
    for name, cfg in LEARNED:
        parts = [done[('learned', name, k)] for k in range(args.folds)]
        entries[name] = dict(results=sum((p['results'] for p in parts), []),
                             fit_s=float(np.mean([p['fit_s'] for p in parts])),
                             member_s=all_s,
                             theta=np.mean([p['theta'] for p in parts], 0).tolist())
    for name, _, _ in CEL_ROWS:
        parts = [done[('cel', name, k)] for k in range(args.folds)]
        num_images = sum(len(p['test']) for p in parts)
        selection = np.zeros((num_images, len(names)))  # [I, N], image order
        cost = np.zeros(num_images)  # [I] seconds run per image
        for p in parts:
            selection[np.sort(p['test'])], cost[np.sort(p['test'])] = p['selection'], p['cost']
        entries[name] = dict(results=sum((p['results'] for p in parts), []),
                             fit_s=float(np.mean([p['fit_s'] for p in parts])),
                             member_s=float(cost.mean()), selection=selection, cost=cost)
    return entries, done[('subsets', )]


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    register_all_modules()  # default scope 'mmens', as the configs'
    wd = osp.abspath(args.work_dir)
    os.makedirs(wd, exist_ok=True)
    t_start = time.time()

    log('[1/4] validating the member prediction files')
    for split in ('train', 'val'):
        coco, batch, seconds = load_split(split)
        log(f'  {split}: {len(batch.names)} members, {len(batch.packed["scores"])} boxes on '
            f'{len(batch.img_ids)} images: valid')
    log('  the train images are COCO train2017, seen by the members in training: every '
        'number below is on val (COCO val2017), out of fold')
    all_s = sum(seconds.values())
    folds = fold_positions(batch.img_ids, args.folds, args.seed)

    log('[2/4] members and fixed rules (fusion timed in this process, 1 call over 80 images)')
    entries = {}
    for name, pred in zip(batch.names, batch.members):
        entries[name] = dict(results=member_results(pred), member_s=seconds[name],
                             kind='member')
    for name, method, cfg in [('NMS', 'nms', dict(iou_thr=0.5)),
                              ('soft-NMS', 'soft_nms', dict(iou_thr=0.5, sigma=0.5)),
                              ('NMW', 'nmw', dict(iou_thr=0.55)),
                              ('WBF (mmens)', 'wbf', dict(iou_thr=0.55))]:
        res, ms = run_fixed(batch, method, **cfg)
        entries[name] = dict(results=res, ms=ms, member_s=all_s, kind='fixed')
    res, ms = run_ensemble_boxes_wbf(batch)
    entries['WBF (ensemble-boxes 1.0.9)'] = dict(results=res, ms=ms, member_s=all_s,
                                                 kind='fixed')

    log(f'[3/4] fitting out of fold ({args.folds} folds): grid-searched WBF, '
        f'{len(LEARNED)} learned ensembles, e2e-CEL at {len(CEL_ROWS)} budgets')
    ctx = get_context('spawn')  # a fresh interpreter: no torch threads copied by fork
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(wd, )) as pool:
        fitted, baselines = run_fits(pool, wd, folds, args, seconds, batch.names)
        for name, e in fitted.items():
            e['kind'] = 'fixed' if name == REFERENCE else 'learned'
        order = list(entries) + [REFERENCE] + [n for n, _ in LEARNED] + [n for n, _, _ in
                                                                        CEL_ROWS]
        entries = {n: {**entries, **fitted}[n] for n in order}
        log(f'[4/4] COCO evaluation and paired bootstrap ({args.bootstrap} resamples)')
        rows = evaluate(pool, entries, args)
    table = write_report(rows, wd)
    log(table)
    log(budget_table(entries, baselines, coco, batch, seconds, args, wd))
    write_outputs(entries, coco, batch, wd, args)
    log(f'wrote results.md, results.csv, fused/*.json and the plots to {wd} '
        f'({time.time() - t_start:.0f} s)')


def _evaluate_job(results: list, reference: list, num_samples: int, seed: int) -> tuple:
    """COCO metrics of one method and the paired bootstrap interval of its AP minus the
    reference's (None for the reference itself)."""
    coco, img_ids = _WORKER['coco'], _WORKER['batch'].img_ids
    ev = CocoEvaluation(coco, results, img_ids)
    ci = None
    if reference is not None:
        b = paired_bootstrap(ev, CocoEvaluation(coco, reference, img_ids, ap_only=True),
                             num_samples, seed)
        ci = (b['lo'], b['hi'])
    return ev.metrics(), ci


def evaluate(pool, entries: dict, args) -> list:
    """COCO metrics of every method and the paired bootstrap against the reference."""
    ref = entries[REFERENCE]['results']
    futures = {pool.submit(_evaluate_job, e['results'], None if name == REFERENCE else ref,
                           args.bootstrap, args.seed): name for name, e in entries.items()}
    out = {}
    with Progress(f'{len(entries)} methods', len(entries)) as bar:
        for future in as_completed(futures):
            out[futures[future]] = future.result()
            bar.step(futures[future])
    return [dict(method=name, kind=e['kind'], ci=out[name][1], ms=e.get('ms'),
                 fit_s=e.get('fit_s'), member_s=e['member_s'], **out[name][0])
            for name, e in entries.items()]


def budget_table(entries: dict, baselines: dict, coco, batch, seconds: dict, args,
                 wd: str) -> str:
    """e2e-CEL at each budget against the best fixed subset within the same seconds and
    the two oracles; appended to ``results.md``, and returned as Markdown."""
    sec = np.array([seconds[n] for n in batch.names])
    rows = []
    for name, _, setting in CEL_ROWS:
        if 'budget' not in setting:
            continue
        e = entries[name]
        methods = [('e2e-CEL', e['results'], e['selection'], e['cost'], None)]
        for method, sel, extra in baselines[setting['budget']]:
            methods.append((method, fuse_selected(batch, torch.as_tensor(
                sel, dtype=torch.float32), **FUSION), sel, sel @ sec, extra))
        rows += setting_rows(coco, batch.img_ids, f"{setting['budget']:g} s", methods,
                             args.seed)
    lines = ['| budget | method | AP | ΔAP vs best fixed subset [95% CI] | s / image: mean, '
             'max (probe + members + net) | members fused / image |', '|---|---|---|---|---|---|']
    for r in rows:
        delta = (f"{100 * r['delta_vs_fixed']:+.1f} [{100 * r['ci_lo']:+.1f}, "
                 f"{100 * r['ci_hi']:+.1f}]" if 'delta_vs_fixed' in r else '')
        lines.append(f"| {r['setting']} | {r['method']} | {100 * r['AP']:.1f} | {delta} | "
                     f"{r['seconds']:.3f}, {r['max_seconds']:.3f} | {r['members']:.2f} |")
    table = '\n'.join(lines)
    with open(osp.join(wd, 'results.md'), 'a', encoding='utf-8') as f:
        f.write('\n' + table + '\n')
    return table


def write_outputs(entries: dict, coco, batch, wd: str, args) -> None:
    """The fused results of every method, Θ plots and example images."""
    os.makedirs(osp.join(wd, 'fused'), exist_ok=True)
    classes = [coco.loadCats([c])[0]['name'] for c in batch.cat_ids]
    for name, e in entries.items():
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
        with open(osp.join(wd, 'fused', f'{safe}.json'), 'w', encoding='utf-8') as f:
            json.dump(e['results'], f)
        if 'theta' in e:
            safe = ''.join(c if c.isalnum() else '_' for c in name).strip('_')
            plot_theta(np.array(e['theta']), batch.names, osp.join(wd, f'theta_{safe}.png'),
                       classes=classes,
                       title=f'Θ of {name} (mean of {args.folds} fold models)')
    shown = {k: entries[k]['results'] for k in ('centernet-512', 'yolofastestv2-352',
                                                 'WBF (mmens)', LEARNED[0][0])}
    draw_examples(coco, osp.join(DATA, 'images', 'val'), shown, EXAMPLE_IMAGES, wd, classes)


def fmt(v, spec):
    return '' if v is None else format(v, spec)


def write_report(rows, wd: str) -> str:
    """``results.md``, ``results.csv`` and ``ap_bars.png``; returns the Markdown table."""
    header = ['method', 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              f'ΔAP vs {REFERENCE} [95% CI]', 'fusion ms/img', 'fit s/fold', 'member s/img']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    csv_rows = []
    ref = next(r for r in rows if r['method'] == REFERENCE)
    for r in rows:
        delta = ''
        if r['ci'] is not None:
            d = 100 * (r['AP'] - ref['AP'])
            delta = f"{d:+.1f} [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
        cells = [r['method']] + [f"{100 * r[k]:.1f}" for k in
                                 ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')] + [
            delta, fmt(r['ms'], '.2f'), fmt(r['fit_s'], '.1f'), f"{r['member_s']:.3f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
        csv_rows.append(cells)
    table = '\n'.join(lines)
    with open(osp.join(wd, 'results.md'), 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    with open(osp.join(wd, 'results.csv'), 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(csv_rows)
    plot_ap_bars(rows, osp.join(wd, 'ap_bars.png'), reference=REFERENCE)
    return table


if __name__ == '__main__':
    run_cli(main)
