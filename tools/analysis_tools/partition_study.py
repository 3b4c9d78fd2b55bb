"""Every fusion row out of fold over several k-fold partitions of ``val``.

One partition (the demo's, seed 0) decides no default: each fitted row is cross-validated
over ``--partitions`` partitions (seeds 0, 1, ...) of the 80 ``val`` images into
``--folds`` folds, and the table gives the out-of-fold AP and its difference to WBF with
grid-searched weights as mean ± sd over the partitions, the smallest difference, and the
95% paired bootstrap interval of partition 0. Every choice a row makes (weights,
thresholds, sigma, ``shrink``) is made on the training images of each fold only::

    nice -n 5 python tools/analysis_tools/partition_study.py --work-dir work_dirs/partitions

Writes ``partitions.md`` and ``partitions.json`` (each row's AP per partition) to the
work dir; the fits log to ``<work-dir>/runs``. Each partition's results are kept in
``<work-dir>/parts`` as it finishes: run again, the study computes only what is missing.
"""
import argparse
import json
import os
import os.path as osp
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np

from cross_val import fold_positions, runner_fold  # helper modules next to this tool
from fusion_baselines import best_grid_index, run_fixed, wbf_grid_evaluations, weight_grid
from theta_wbf import ANCHOR_OPTIONS, THETA_GLOBAL, WEIGHTS, theta_wbf_fold
from mmens.apis import load_coco, load_member_batch
from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.utils import register_all_modules, run_cli
from mmens.utils.progress import Progress

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
REFERENCE = 'WBF, grid-searched weights'
SEARCH = [dict(type='FusionSearchHook')]  # the threshold search, without the Θ plots
#: the rows: (name, kind, what). 'fixed': a rule; 'grid': WBF weights by AP on the
#: training images; 'tuned': a rule's settings by AP on the training images; 'runner': a
#: config (+ cfg_options) trained per fold; 'theta_wbf': :mod:`theta_wbf`.
ROWS = [
    ('WBF, equal weights', 'fixed', ('wbf', dict(iou_thr=0.55))),
    (REFERENCE, 'grid', None),
    ('NMS, iou_thr tuned', 'tuned', ('nms', [dict(iou_thr=t) for t in
                                            (0.3, 0.4, 0.5, 0.6, 0.7)])),
    ('soft-NMS, sigma and thresh tuned', 'tuned', (
        'soft_nms', [dict(sigma=s, thresh=t) for s in (0.05, 0.1, 0.3, 0.5, 1.0)
                     for t in (0.001, 0.01)])),
    ('learned WBF weights (default)', 'runner', (WEIGHTS, ANCHOR_OPTIONS)),
    ('thresholds alone', 'runner', (WEIGHTS, {'custom_hooks': SEARCH})),
    ('Θ on the WBF form', 'theta_wbf', None),
    ('Θ global (seed form, reference)', 'runner', (THETA_GLOBAL, {'custom_hooks': []})),
]
ANCHOR_ROW = 'learned WBF weights (default)'  # Θ on the WBF form starts there


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='fusion rows over several k-fold partitions')
    p.add_argument('--work-dir', default='work_dirs/partitions')
    p.add_argument('--partitions', type=int, default=5, help='partitions (seeds 0, 1, ...)')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--bootstrap', type=int, default=500, help='resamples (partition 0)')
    p.add_argument('--workers', type=int, default=2, help='processes (one partition each)')
    p.add_argument('--rows', nargs='+', help='only these rows (by name; the reference '
                   'always runs)')
    return p.parse_args(argv)


_WORKER: dict = {}


def load_val():
    """The ``val`` ground truth and the validated member batch."""
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        names = [m['name'] for m in json.load(f)]
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    files = [osp.join(DATA, 'predictions', 'val', f'{n}.json') for n in names]
    return coco, load_member_batch(coco, files, names)


def _init_worker(work_dir: str) -> None:
    import sys

    import torch
    torch.set_num_threads(1)  # one process per core
    os.makedirs(osp.join(work_dir, 'runs'), exist_ok=True)
    sys.stdout = sys.stderr = open(osp.join(work_dir, 'runs', f'worker-{os.getpid()}.log'),
                                   'w', buffering=1, encoding='utf-8')
    warnings.filterwarnings('ignore')
    register_all_modules()
    _WORKER['coco'], _WORKER['batch'] = load_val()


def _choice_results(batch, evals, folds) -> list:
    """Per fold, the candidate with the best AP on its training images, applied to its
    held-out images (a rule that fits nothing: the pooled inner-CV AP of a candidate is
    its AP on the training images, so this is the inner-CV choice)."""
    results = []
    for train, test in folds:
        held_out = {batch.img_ids[i] for i in test}
        results += [r for r in evals[best_grid_index(evals, train)][0]
                    if r['image_id'] in held_out]
    return results


def _fixed_evaluations(batch, coco, method: str, cfgs: list) -> list:
    return [(res, CocoEvaluation(coco, res, batch.img_ids, ap_only=True))
            for res in (run_fixed(batch, method, **cfg)[0] for cfg in cfgs)]


def run_partition(p: int, work_dir: str, num_folds: int, rows: list) -> dict:
    """Every row of ``rows`` out of fold on partition ``p``: name -> (results, fit s,
    what each fold chose: Θ on the WBF form's ``shrink`` and Θ)."""
    coco, batch = _WORKER['coco'], _WORKER['batch']
    folds = fold_positions(batch.img_ids, num_folds, p)
    out, anchors = {}, {}
    for name, kind, what in rows:
        t0 = time.perf_counter()
        if kind == 'fixed':
            out[name] = (run_fixed(batch, what[0], **what[1])[0], 0.0, [])
            continue
        if kind in ('grid', 'tuned'):
            evals = (wbf_grid_evaluations(batch, coco, weight_grid(batch.names))
                     if kind == 'grid' else _fixed_evaluations(batch, coco, *what))
            out[name] = (_choice_results(batch, evals, folds),
                         (time.perf_counter() - t0) / num_folds, [])
            continue
        results, seconds, chosen = [], [], []
        for k in range(num_folds):
            run_dir = osp.join(work_dir, 'runs', f'p{p}', ''.join(
                c if c.isalnum() else '_' for c in name))
            if kind == 'runner':
                res, sec, model = runner_fold(what[0], batch, run_dir, k, num_folds, p,
                                              what[1])
                if name == ANCHOR_ROW:
                    anchors[k] = model.head.member_weights().tolist()
            else:  # Θ on the WBF form, from the anchor row's weights of the same fold
                fit = theta_wbf_fold(batch, coco, folds, k, p, run_dir, anchors[k])
                res, sec = fit['results'], fit['fit_s']
                chosen.append(dict(shrink=fit['shrink'], theta=fit['theta']))
            results += res
            seconds.append(sec)
        out[name] = (results, float(np.mean(seconds)), chosen)
    return out


def summarise(per_part: dict, names: list, bootstrap: int) -> list:
    """Rows of the table from each partition's results (run in the main process)."""
    coco, batch = _WORKER['coco'], _WORKER['batch']
    everything = np.arange(len(batch.img_ids))
    evs = {(n, p): CocoEvaluation(coco, per_part[p][n][0], batch.img_ids, ap_only=True)
           for p in per_part for n in names}
    rows = []
    for n in names:
        ap = np.array([evs[(n, p)].ap(everything) for p in sorted(per_part)])
        ref = np.array([evs[(REFERENCE, p)].ap(everything) for p in sorted(per_part)])
        ci = None if n == REFERENCE else paired_bootstrap(
            evs[(n, 0)], evs[(REFERENCE, 0)], bootstrap, 0)
        rows.append(dict(method=n, ap=ap.tolist(), delta=(ap - ref).tolist(), ci=ci,
                         fit_s=float(np.mean([per_part[p][n][1] for p in per_part])),
                         chosen={p: per_part[p][n][2] for p in sorted(per_part)}))
    return rows


def _mean_sd(x: np.ndarray, sign: str = '') -> str:
    return f'{x.mean():{sign}.1f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.1f}'


def table(rows: list) -> str:
    head = ['method', 'AP, mean ± sd', 'ΔAP vs grid-searched WBF, mean ± sd', 'min ΔAP',
            'ΔAP partition 0 [95% CI]', 'fit s/fold']
    lines = ['| ' + ' | '.join(head) + ' |', '|---|---:|---:|---:|---|---:|']
    for r in rows:
        ap, d = 100 * np.array(r['ap']), 100 * np.array(r['delta'])
        ci = '' if r['ci'] is None else (f"{100 * r['ci']['diff']:+.1f} "
                                         f"[{100 * r['ci']['lo']:+.1f}, "
                                         f"{100 * r['ci']['hi']:+.1f}]")
        lines.append(f"| {r['method']} | {_mean_sd(ap)} | "
                     f"{'' if r['ci'] is None else _mean_sd(d, '+')} | "
                     f"{'' if r['ci'] is None else format(d.min(), '+.1f')} | {ci} | "
                     f"{r['fit_s']:.1f} |")
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    wd = osp.abspath(args.work_dir)
    os.makedirs(wd, exist_ok=True)
    known = [n for n, _, _ in ROWS]
    unknown = sorted(set(args.rows or []) - set(known))
    if unknown:
        raise ValueError(f'--rows: unknown row(s) {unknown}; rows are {known}')
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows or r[0] == REFERENCE
            or (r[0] == ANCHOR_ROW and 'Θ on the WBF form' in args.rows)]
    t0 = time.time()
    per_part = load_parts(wd, range(args.partitions), [r[0] for r in rows])
    todo = [p for p in range(args.partitions) if p not in per_part]
    ctx = get_context('spawn')
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(wd, )) as pool:
        futures = {pool.submit(run_partition, p, wd, args.folds, rows): p for p in todo}
        with Progress(f'{len(todo)} partitions x {len(rows)} rows x {args.folds} '
                      f'folds in {args.workers} processes', len(todo)) as bar:
            for future in as_completed(futures):
                p = futures[future]
                per_part[p] = future.result()
                with open(osp.join(wd, 'parts', f'p{p}.json'), 'w', encoding='utf-8') as f:
                    json.dump(per_part[p], f)
                bar.step(f'partition {p}')
    _init_worker_main()
    out = summarise(per_part, [r[0] for r in rows], args.bootstrap)
    md = table(out)
    with open(osp.join(wd, 'partitions.md'), 'w', encoding='utf-8') as f:
        f.write(md + '\n')
    with open(osp.join(wd, 'partitions.json'), 'w', encoding='utf-8') as f:
        json.dump(out, f, indent=1)
    print(md)
    print(f'wrote partitions.md and partitions.json to {wd} ({time.time() - t0:.0f} s)')


def load_parts(wd: str, partitions, names: list) -> dict:
    """The partitions already done (``<wd>/parts/p<k>.json``, written as each finishes)
    that have every row of ``names``: a stopped study goes on where it was."""
    os.makedirs(osp.join(wd, 'parts'), exist_ok=True)
    done = {}
    for p in partitions:
        path = osp.join(wd, 'parts', f'p{p}.json')
        if osp.isfile(path):
            with open(path, encoding='utf-8') as f:
                part = json.load(f)
            if all(n in part for n in names):
                done[p] = {n: part[n] for n in names}
    return done


def _init_worker_main() -> None:
    register_all_modules()
    _WORKER['coco'], _WORKER['batch'] = load_val()


if __name__ == '__main__':
    run_cli(main)
