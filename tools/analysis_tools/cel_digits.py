"""e2e-CEL on scikit-learn's digits: test accuracy per method per ensemble size k.

Example::

    python tools/analysis_tools/cel_digits.py --seed 0 --sizes 1 2 3 4 5 6 7 8 9 --out work_dirs/cel_digits.md

See :mod:`mmens.experiments.cel_digits` for the setting and the methods.
"""
import argparse
import csv
import os
import os.path as osp
import time
import warnings
from typing import List, Optional

import torch

from mmens.experiments.cel_digits import CelDigitsConfig, format_table, run_cel_digits


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    d = CelDigitsConfig()
    p = argparse.ArgumentParser(description='e2e-CEL vs ensemble baselines on sklearn digits')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--sizes', type=int, nargs='+', default=list(d.sizes),
                   help='ensemble sizes k (1 <= k <= num-learners)')
    p.add_argument('--num-learners', type=int, default=d.num_learners)
    p.add_argument('--classes-per-learner', type=int, default=d.classes_per_learner)
    p.add_argument('--other-fraction', type=float, default=d.other_fraction,
                   help='fraction of non-specialty train images each learner sees')
    p.add_argument('--epochs', type=int, default=d.epochs)
    p.add_argument('--lr', type=float, default=d.lr)
    p.add_argument('--num-samples', type=int, default=d.num_samples, help='M perturbations')
    p.add_argument('--sigma', type=float, default=d.sigma)
    p.add_argument('--noise', choices=['normal', 'gumbel'], default=d.noise)
    p.add_argument('--no-l2-normalize', action='store_true')
    p.add_argument('--aggregate', choices=['softmax', 'log'], default=d.aggregate)
    p.add_argument('--selection', choices=['perturbed', 'random'], default=d.selection,
                   help="'random' replaces the learned selection (a control)")
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--out', default=None, help='write the table to this .csv or .md file')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CelDigitsConfig(
        seed=args.seed, sizes=tuple(args.sizes), num_learners=args.num_learners,
        classes_per_learner=args.classes_per_learner, other_fraction=args.other_fraction,
        epochs=args.epochs, lr=args.lr, num_samples=args.num_samples, sigma=args.sigma,
        noise=args.noise, l2_normalize=not args.no_l2_normalize, aggregate=args.aggregate,
        selection=args.selection)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # sklearn convergence chatter on tiny subsets
        rows = run_cel_digits(cfg)
    table = format_table(rows)
    print(f'# e2e-CEL on digits: test accuracy (seed {cfg.seed}, {cfg.num_learners} learners, '
          f'{cfg.classes_per_learner} classes each, other_fraction {cfg.other_fraction}, '
          f'{time.time() - t0:.1f}s)')
    print(table)
    if args.out:
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        with open(args.out, 'w', newline='', encoding='utf-8') as f:
            if args.out.endswith('.csv'):
                writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                writer.writeheader()
                writer.writerows([{c: round(v, 4) for c, v in r.items()} for r in rows])
            else:
                f.write(table + '\n')
    return rows


if __name__ == '__main__':
    main()
