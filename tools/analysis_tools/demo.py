"""The main job: every member, fixed rule, learned ensemble and e2e-CEL on the embedded data.

Scores are out-of-fold on ``val`` (COCO val2017 images, unseen by the members): every method
that learns anything is fitted on 4/5 of the images and predicts the other 1/5, five times,
and COCO AP is computed once over all 80 images, with a paired bootstrap interval (over
images) of each method's difference to grid-searched WBF. e2e-CEL is also reported against
member-compute budgets (k = 1..5 members, 0.2 s and 0.4 s per image) beside the best fixed
subset, a random subset and all members (``budget.md``, ``ap_vs_budget.png``,
``selection_frequency.png``). Results are cached in the work dir; a second run reuses them
and says so.

    python tools/analysis_tools/demo.py --work-dir work_dirs/demo
"""
import argparse
import csv
import glob
import hashlib
import json
import os
import os.path as osp
import time

import numpy as np

import mmens  # noqa: F401  (registers the mmens modules)
from mmengine.registry import init_default_scope

from mmens.apis import load_coco, load_member_batch, member_results
from mmens.experiments.cel_budget import budget_report, write_budget_outputs
from mmens.experiments.cross_val import (cross_validate, runner_fit_predict,
                                  subset_batch)
from mmens.apis.inference import build_fixed_ensemble, fuse_batch
from mmens.experiments.methods import (grid_search_wbf, run_ensemble_boxes_wbf,
                                run_fixed, weight_grid)
from mmens.evaluation.coco_eval import CocoEvaluation, paired_bootstrap
from mmens.utils import run_cli
from mmens.visualization import draw_examples, plot_ap_bars, plot_theta

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
           'yolofastestv2-352', 'yolofastestv2-352-hflip']
REFERENCE = 'WBF, grid-searched weights'
CEL_CONFIG = 'configs/cel/cel_budget-0.4s_6members_coco-real-val.py'
# e2e-CEL is also reported gated: kept on an outer fold only if it beats the best fixed
# subset in a 3-fold cross-validation inside that fold's training images
CEL_GATE_FOLDS = 3
CEL_SETTINGS = [dict(k=k) for k in range(1, 6)] + [dict(budget=0.2), dict(budget=0.4)]
CEL_ROWS = ['0.2 s', '0.4 s']
EXAMPLE_IMAGES = [5001, 25603]
LEARNED = [
    ('Θ global (seed J)', 'configs/learned/learned_theta-global_6members_coco-real-val.py'),
    ('Θ per-class (seed J)',
     'configs/learned/learned_theta-per-class_6members_coco-real-val.py'),
    ('conditional Θ + rescoring net',
     'configs/learned/learned_conditional_6members_coco-real-val.py'),
    ('learned WBF weights (default)',
     'configs/learned/learned-weights_6members_coco-real-val.py'),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='mmens demo on the embedded real COCO data')
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--bootstrap', type=int, default=500, help='bootstrap resamples')
    p.add_argument('--no-cache', action='store_true', help='recompute every method')
    p.add_argument('--skip-learned', action='store_true', help='fixed rules only (fast)')
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def source_files() -> list:
    """mmens' code and configs: a change to either invalidates the cached results (the
    config text alone misses its ``_base_`` files and the code that trains)."""
    return sorted(glob.glob(osp.join(ROOT, 'mmens', '**', '*.py'), recursive=True)
                  + glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))


def data_hash(files) -> str:
    h = hashlib.sha1(mmens.__version__.encode())
    for f in list(files) + source_files():
        with open(f, 'rb') as fh:
            h.update(hashlib.sha1(fh.read()).digest())
    return h.hexdigest()[:12]


class Cache:
    """Per-method results in ``<work_dir>/cache``, keyed by data and method spec."""

    def __init__(self, work_dir: str, key: str, enabled: bool) -> None:
        self.dir = osp.join(work_dir, 'cache')
        os.makedirs(self.dir, exist_ok=True)
        self.key, self.enabled = key, enabled

    def path(self, name: str, spec: str) -> str:
        tag = hashlib.sha1(f'{self.key}|{name}|{spec}'.encode()).hexdigest()[:12]
        return osp.join(self.dir, f'{tag}.json')

    def get(self, name: str, spec: str):
        p = self.path(name, spec)
        if self.enabled and osp.isfile(p):
            with open(p, encoding='utf-8') as f:
                return json.load(f)
        return None

    def put(self, name: str, spec: str, entry: dict) -> None:
        with open(self.path(name, spec), 'w', encoding='utf-8') as f:
            json.dump(entry, f)


def spec_of(config: str) -> str:
    with open(osp.join(ROOT, config), encoding='utf-8') as f:
        return f.read()


def main(argv=None) -> None:
    args = parse_args(argv)
    import warnings  # two known, harmless warnings per fold would bury the progress lines
    warnings.filterwarnings('ignore', message='Detected call of `scheduler.step')
    warnings.filterwarnings('ignore', message='.*instance named of visualizer has been')
    init_default_scope('mmdet')
    wd = osp.abspath(args.work_dir)
    os.makedirs(wd, exist_ok=True)
    t_start = time.time()
    with open(osp.join(DATA, 'members.json'), encoding='utf-8') as f:
        seconds = {m['name']: m['seconds_per_image'] for m in json.load(f)}

    log('[1/4] validating the member prediction files')
    batches = {}
    for split in ('train', 'val'):
        coco = load_coco(osp.join(DATA, 'annotations', f'{split}.json'))
        files = [osp.join(DATA, 'predictions', split, f'{m}.json') for m in MEMBERS]
        batches[split] = (coco, load_member_batch(coco, files), files)
        n_boxes = sum(len(m) for m in batches[split][1].members)
        log(f'  {split}: {len(MEMBERS)} members, {n_boxes} boxes on '
            f'{len(batches[split][1].img_ids)} images: valid')
    log('  note: the train images are COCO train2017, seen by the members in training; '
        'every number below is on val (COCO val2017), out of fold')
    coco, batch, files = batches['val']
    cache = Cache(wd, data_hash(files), not args.no_cache)
    all_s = sum(seconds[m] for m in MEMBERS)
    methods = []  # (name, kind, spec, compute function)
    for m, pred in zip(MEMBERS, batch.members):
        methods.append((m, 'member', 'member',
                        lambda pred=pred, m=m: dict(results=member_results(pred),
                                                    member_s=seconds[m])))
    for name, method, cfg in [('NMS', 'nms', dict(iou_thr=0.5)),
                              ('soft-NMS', 'soft_nms', dict(iou_thr=0.5, sigma=0.5)),
                              ('NMW', 'nmw', dict(iou_thr=0.55)),
                              ('WBF (mmens)', 'wbf', dict(iou_thr=0.55))]:
        methods.append((name, 'fixed', f'{method}{cfg}',
                        lambda method=method, cfg=cfg: dict(
                            zip(('results', 'ms'), run_fixed(batch, method, **cfg)))))
    methods.append(('WBF (ensemble-boxes 1.0.9)', 'fixed', 'eb-wbf',
                    lambda: dict(zip(('results', 'ms'), run_ensemble_boxes_wbf(batch)))))
    grid = weight_grid(batch.names)

    def tuned_wbf():
        def fit_predict(train, test):
            best, sec = grid_search_wbf(batch, coco, train, grid)
            res, _ = fuse_batch(build_fixed_ensemble(batch.names, 'wbf', **best),
                                subset_batch(batch, test))
            return res, sec
        res, fit = cross_validate(fit_predict, batch.img_ids, args.folds, args.seed)
        return dict(results=res, fit_s=fit / args.folds)
    methods.append((REFERENCE, 'fixed', f'grid{grid}', tuned_wbf))
    if not args.skip_learned:
        for name, cfg in LEARNED:
            def learned(cfg=cfg, name=name):
                models: list = []
                fp = runner_fit_predict(osp.join(ROOT, cfg), batch,
                                        osp.join(wd, 'runs', osp.basename(cfg)[:-3]),
                                        args.folds, args.seed, models=models)
                res, fit = cross_validate(fp, batch.img_ids, args.folds, args.seed)
                theta = sum(m.head.theta_table() for m in models) / len(models)
                return dict(results=res, fit_s=fit / args.folds, theta=theta.tolist())
            methods.append((name, 'learned', spec_of(cfg), learned))

    budget = None
    if not args.skip_learned:
        budget = run_budget_report(batch, coco, seconds, cache, wd, args)
        for setting in CEL_ROWS:
            e = budget['cel_results'][setting]
            methods.append((f'e2e-CEL, {setting} member budget', 'learned', 'budget-report',
                            lambda e=e: {k: v for k, v in e.items() if k != 'gated'}))
            methods.append((f'e2e-CEL gated, {setting} member budget', 'learned',
                            'budget-report', lambda e=e: dict(e['gated'])))

    log(f'[2/4] running {len(methods)} methods ({args.folds}-fold cross-validation where '
        'anything is fitted)')
    entries = {}
    for i, (name, kind, spec, fn) in enumerate(methods, 1):
        t0 = time.time()
        entry = cache.get(name, spec)
        how = 'cached (reused; --no-cache recomputes)'
        if entry is None:
            entry = fn()
            entry.setdefault('member_s', all_s)
            how = f'{time.time() - t0:.1f} s'
            if spec != 'budget-report':  # those are cached with the report
                cache.put(name, spec, entry)
            else:
                how = 'from the budget report above'
        entry['kind'] = kind
        entries[name] = entry
        log(f'  [{i:2d}/{len(methods)}] {name:32s} {how}')

    log(f'[3/4] COCO evaluation and paired bootstrap ({args.bootstrap} resamples)')
    evals = {n: CocoEvaluation(coco, e['results'], batch.img_ids) for n, e in entries.items()}
    rows = []
    for name, e in entries.items():
        m = evals[name].metrics()
        ci = None
        if name != REFERENCE and REFERENCE in evals:
            b = paired_bootstrap(evals[name], evals[REFERENCE], args.bootstrap, args.seed)
            ci = (b['lo'], b['hi'])
        rows.append(dict(method=name, kind=e['kind'], ci=ci, ms=e.get('ms'),
                         fit_s=e.get('fit_s'), member_s=e['member_s'], **m))
        os.makedirs(osp.join(wd, 'fused'), exist_ok=True)
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
        with open(osp.join(wd, 'fused', f'{safe}.json'), 'w', encoding='utf-8') as f:
            json.dump(e['results'], f)
    write_report(rows, wd)
    for name, e in entries.items():
        if 'theta' in e:
            safe = ''.join(c if c.isalnum() else '_' for c in name).strip('_')
            plot_theta(np.array(e['theta']), MEMBERS, osp.join(wd, f'theta_{safe}.png'),
                       classes=batch_classes(coco, batch), title=f'Θ of {name} '
                       f'(mean of {args.folds} fold models)')
    shown = {k: entries[k]['results'] for k in ('centernet-512', 'yolofastestv2-352',
                                                 'WBF (mmens)', LEARNED[-1][0]) if k in entries}
    draw_examples(coco, osp.join(DATA, 'images', 'val'), shown, EXAMPLE_IMAGES, wd,
                  batch_classes(coco, batch))
    log(f'[4/4] wrote the table, fused results and plots to {wd} '
        f'({time.time() - t_start:.0f} s)')


def run_budget_report(batch, coco, seconds: dict, cache, wd: str, args) -> dict:
    """e2e-CEL against the best fixed subset, a random subset and all members, at
    k = 1..N-1 and the time budgets (tools/analysis_tools/cel_budget.py); cached as a whole."""
    spec = (spec_of(CEL_CONFIG) + f'|{CEL_SETTINGS}|{args.folds}|{args.seed}'
            f'|gate{CEL_GATE_FOLDS}')
    report = cache.get('budget report', spec)
    if report is None:
        t0 = time.time()
        log(f'  e2e-CEL budget report: {len(CEL_SETTINGS)} budgets x {args.folds} folds')
        report = budget_report(batch, coco, [seconds[m] for m in batch.names], CEL_SETTINGS,
                               osp.join(ROOT, CEL_CONFIG), osp.join(wd, 'runs', 'cel'),
                               args.folds, args.seed, gate_folds=CEL_GATE_FOLDS,
                               progress=lambda msg: log(f'    {msg}'))
        cache.put('budget report', spec, report)
        log(f'  e2e-CEL budget report: {time.time() - t0:.1f} s')
    else:
        log('  e2e-CEL budget report: cached (reused; --no-cache recomputes)')
    table = write_budget_outputs(report, wd)
    log('AP against member compute per image (out of fold; budget.md, ap_vs_budget.png, '
        'selection_frequency.png):')
    log(table)
    return report


def batch_classes(coco, batch):
    return [coco.loadCats([c])[0]['name'] for c in batch.cat_ids]


def fmt(v, spec):
    return '' if v is None else format(v, spec)


def write_report(rows, wd: str) -> None:
    header = ['method', 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              f'ΔAP vs {REFERENCE} [95% CI]', 'fusion ms/img', 'fit s/fold', 'member s/img']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    csv_rows = []
    ref = next((r for r in rows if r['method'] == REFERENCE), None)
    for r in rows:
        delta = ''
        if r['ci'] is not None and ref is not None:
            d = 100 * (r['AP'] - ref['AP'])
            delta = f"{d:+.1f} [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
        cells = [r['method']] + [f"{100 * r[k]:.1f}" for k in
                                 ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')] + [
            delta, fmt(r['ms'], '.2f'), fmt(r['fit_s'], '.1f'), f"{r['member_s']:.3f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
        csv_rows.append(cells)
    table = '\n'.join(lines)
    print(table, flush=True)
    with open(osp.join(wd, 'results.md'), 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    with open(osp.join(wd, 'results.csv'), 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(csv_rows)
    plot_ap_bars(rows, osp.join(wd, 'ap_bars.png'), reference=REFERENCE)


if __name__ == '__main__':
    run_cli(main)
