"""Out-of-fold AP against member-compute budget on the embedded val split (e2e-CEL issue).

    python tools/analysis_tools/cel_budget.py --work-dir work_dirs/cel_budget

For k = 1..N-1 members (unit costs) and time budgets (default 0.2 s and 0.4 s of member
compute per image, from ``members.json``) it reports e2e-CEL (trained per fold with
``tools/train.py``'s Runner path), the best fixed subset chosen on the same training folds
(exhaustive), a random subset, and all-member fusion; all fuse with equal-weight WBF.
Writes ``budget.md``, ``budget.csv``, ``budget.json``, ``ap_vs_budget.png`` and
``selection_frequency.png`` into the work dir.
"""
import argparse
import glob
import json
import os
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmens  # noqa: F401  (registers the mmens modules)
from mmengine.config import DictAction
from mmens.apis import load_coco, load_member_batch
from mmens.experiments.cel_budget import budget_report, write_budget_outputs
from mmens.utils import run_cli
from mmens.utils.progress import Progress

DATA = osp.join(ROOT, 'data', 'coco_real')


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
        from mmens.experiments.cross_val import subset_batch
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
