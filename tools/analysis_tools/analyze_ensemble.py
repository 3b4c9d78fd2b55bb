"""Diagnose an ensemble from its COCO-results files: members against the fused result.

    python tools/analysis_tools/analyze_ensemble.py --ann GT.json \\
        --preds A.json B.json C.json --fused fused.json --out-dir work_dirs/analysis \\
        [--method wbf --iou-thr 0.55 --conf-type avg --weights 2 1 1]

Writes to ``--out-dir``:

- ``summary.md``: the tables below in markdown, and the warnings;
- ``members.csv``: COCO metrics (AP, AP50, AP75, APs, APm, APl) of each member and of the
  fused file, each member's AP minus the ensemble's with its 95% paired bootstrap interval
  over images;
- ``per_class_ap.csv``: AP of each category (rows) for each member and the ensemble;
- ``leave_one_out.csv``: for each member, the AP of the ensemble re-fused without it by the
  same rule (``--method`` and its options, as ``fuse_results.py`` takes them; with
  ``--weights``, the member's weight leaves with it) and its contribution: the AP of all
  members re-fused minus that AP, with its paired bootstrap interval;
- ``pr_curve.png``: precision against recall at IoU 0.5 (mean over categories) of each
  member and of the ensemble.

WBF fusing a single model's predictions (one member file) is known to score below NMS of
the same predictions: the tool then warns, with both APs. When the rule given does not
reproduce the fused file (re-fused AP differs), ``summary.md`` says so: the leave-one-out
column is about the re-fused ensemble. Bad input (a missing or malformed file, an id the
annotation file lacks) is refused in one line naming the file, entry and field.
"""
import argparse
import csv
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np

from mmens.apis.fixed_ensemble import build_fixed_ensemble
from mmens.apis.inference import fuse_batch
from mmens.apis.member_files import MemberBatch, load_coco, load_member_batch, member_results
from mmens.evaluation.coco_eval import METRIC_NAMES, CocoEvaluation, paired_bootstrap
from mmens.utils.cli import run_cli
from mmens.utils.paths import check_input_file, check_member_files, check_output_dir

FIXED = ('wbf', 'nms', 'soft_nms', 'nmw')
ENSEMBLE = 'ensemble'
BOOTSTRAP = 500


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='members against their ensemble: metrics, '
                                'per-class AP, leave-one-out, precision-recall plot')
    p.add_argument('--ann', required=True, help='COCO annotation file (with annotations)')
    p.add_argument('--preds', nargs='+', required=True, help='one COCO-results JSON per member')
    p.add_argument('--names', nargs='+', help='member names (default: file stems)')
    p.add_argument('--fused', required=True, help='the fused COCO-results JSON')
    p.add_argument('--out-dir', required=True, help='where the tables and the plot go')
    p.add_argument('--method', default='wbf', choices=FIXED,
                   help='the rule that made --fused (leave-one-out re-fuses with it)')
    p.add_argument('--weights', nargs='+', type=float, help='member weights of the rule')
    p.add_argument('--iou-thr', type=float, help="IoU threshold (default: the method's)")
    p.add_argument('--skip-box-thr', type=float, help='drop boxes scoring below it')
    p.add_argument('--conf-type', help='WBF confidence rule')
    p.add_argument('--sigma', type=float, help='soft-NMS sigma')
    p.add_argument('--thresh', type=float, help='soft-NMS score threshold')
    p.add_argument('--bootstrap', type=int, default=BOOTSTRAP,
                   help=f'bootstrap resamples of the intervals (default {BOOTSTRAP})')
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The command line's mistakes, each one line, before any file is read."""
    check_member_files(args.ann, args.preds)
    check_input_file(args.fused, '--fused')
    check_output_dir(args.out_dir, '--out-dir')
    n = len(args.preds)
    if args.names and len(args.names) != n:
        raise ValueError(f'--names has {len(args.names)} names for {n} --preds files')
    if args.weights and len(args.weights) != n:
        raise ValueError(f'--weights has {len(args.weights)} values for {n} --preds files')
    if args.bootstrap < 10:
        raise ValueError(f'--bootstrap must be at least 10, got {args.bootstrap}')


def fusion_cfg(args: argparse.Namespace) -> dict:
    return dict(iou_thr=args.iou_thr, skip_box_thr=args.skip_box_thr, conf_type=args.conf_type,
                sigma=args.sigma, thresh=args.thresh)


def per_class_ap(ev: CocoEvaluation) -> np.ndarray:
    """``[K]`` AP (IoU .50:.95, all areas, 100 detections) per category of
    ``ev.E.params.catIds``; NaN for a category without ground truth."""
    prec = ev.E.eval['precision'][:, :, :, 0, -1]  # [T, R, K]
    valid = prec > -1
    total = np.where(valid, prec, 0.0).sum((0, 1))
    count = valid.sum((0, 1))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def pr_curve(ev: CocoEvaluation) -> tuple:
    """``(recall [R], precision [R])`` at IoU 0.5, all areas, 100 detections, the mean over
    the categories with ground truth."""
    prec = ev.E.eval['precision'][0, :, :, 0, -1]  # [R, K]
    has_gt = (prec > -1).any(0)  # [K]
    return ev.E.params.recThrs, prec[:, has_gt].mean(1) if has_gt.any() else prec[:, 0] * 0


def evaluate(coco, entries: List[dict], name: str) -> Tuple[CocoEvaluation, Dict[str, float]]:
    """The full COCO evaluation of a result list and its metrics over every image (which
    leaves pycocotools' accumulation of all images in ``ev.E.eval``)."""
    ev = CocoEvaluation(coco, entries)
    if ev.empty:  # pycocotools does not run on nothing: no per-class AP, no curve
        raise ValueError(f'{name}: no detection on the images of the annotation file')
    return ev, ev.metrics()


def drop_member(batch: MemberBatch, m: int) -> MemberBatch:
    """``batch`` without member ``m`` (the others renumbered ``0..N-2``)."""
    packed = dict(batch.packed)
    keep = packed['members'] != m  # [M]
    for k in ('bboxes', 'scores', 'labels', 'members', 'images'):
        packed[k] = packed[k][keep]
    packed['members'] = packed['members'] - (packed['members'] > m).long()
    names = batch.names[:m] + batch.names[m + 1:]
    return MemberBatch(names, batch.img_ids, batch.cat_ids, packed,
                       batch.members[:m] + batch.members[m + 1:])


def refuse(batch: MemberBatch, method: str, weights, cfg: dict) -> List[dict]:
    """The members of ``batch`` fused by ``method`` (as ``fuse_results.py`` does)."""
    model = build_fixed_ensemble(batch.names, method, weights=weights, **cfg)
    return fuse_batch(model, batch)[0]


def leave_one_out(coco, batch: MemberBatch, args, everyone: CocoEvaluation) -> List[dict]:
    """Per member: the AP of the re-fused ensemble without it, and its contribution
    (everyone's AP minus that AP) with the paired bootstrap interval."""
    rows = []
    for m, name in enumerate(batch.names):
        weights = None if not args.weights else args.weights[:m] + args.weights[m + 1:]
        without = CocoEvaluation(coco, refuse(drop_member(batch, m), args.method, weights,
                                              fusion_cfg(args)), ap_only=True)
        diff = paired_bootstrap(everyone, without, args.bootstrap)
        rows.append(dict(member=name, AP_without=everyone.ap(np.arange(len(
            everyone.img_ids))) - diff['diff'], contribution=diff['diff'], lo=diff['lo'],
            hi=diff['hi']))
        print(f'leave-one-out {m + 1}/{len(batch.names)}: without {name}', file=sys.stderr)
    return rows


def single_model_warning(coco, batch: MemberBatch, args, fused: CocoEvaluation) -> str:
    """A warning when WBF fused one model's predictions: its AP and NMS's of the same."""
    if args.method != 'wbf' or len(batch.names) > 1:
        return ''
    nms = CocoEvaluation(coco, refuse(batch, 'nms', None, dict(iou_thr=args.iou_thr)),
                         ap_only=True)
    everything = np.arange(len(fused.img_ids))
    return (f'warning: WBF of a single model ({batch.names[0]}): AP '
            f'{100 * fused.ap(everything):.2f} against {100 * nms.ap(everything):.2f} for '
            'NMS of the same predictions; WBF of one model is known to do worse than NMS '
            '(fuse several models, or use --method nms)')


def fmt(x: float) -> str:
    return 'n/a' if x is None or np.isnan(x) else f'{100 * x:.2f}'


def markdown(header: Sequence[str], rows: List[Sequence]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def write_csv(path: str, header: Sequence[str], rows: List[Sequence]) -> None:
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def member_table(evals: Dict[str, CocoEvaluation], metrics: Dict[str, dict], args) -> tuple:
    """``(header, csv rows, markdown rows)`` of the metrics of every result set and each
    member's ΔAP to the ensemble."""
    header = ['name', *METRIC_NAMES, 'dAP_vs_ensemble', 'dAP_lo', 'dAP_hi']
    rows, md = [], []
    for name, ev in evals.items():
        d = (dict(diff=0.0, lo=0.0, hi=0.0) if name == ENSEMBLE else
             paired_bootstrap(ev, evals[ENSEMBLE], args.bootstrap))
        values = [metrics[name][k] for k in METRIC_NAMES]
        rows.append([name, *(round(v, 6) for v in values),
                     *(round(d[k], 6) for k in ('diff', 'lo', 'hi'))])
        md.append([name, *(fmt(v) for v in values),
                   '' if name == ENSEMBLE else f"{fmt(d['diff'])} [{fmt(d['lo'])}, "
                   f"{fmt(d['hi'])}]"])
    return header, rows, md


def write_report(args, coco, evals: Dict[str, CocoEvaluation], metrics: Dict[str, dict],
                 loo: List[dict], notes: List[str]) -> None:
    """The CSV files, ``summary.md`` and ``pr_curve.png`` of ``--out-dir``."""
    from mmens.visualization import plot_pr_curves
    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    header, rows, md_rows = member_table(evals, metrics, args)
    write_csv(osp.join(out, 'members.csv'), header, rows)
    cat_ids = evals[ENSEMBLE].E.params.catIds
    names = [coco.cats[c]['name'] for c in cat_ids]
    per_class = np.stack([per_class_ap(ev) for ev in evals.values()], 1)  # [K, N + 1]
    write_csv(osp.join(out, 'per_class_ap.csv'), ['category', *evals],
              [[n, *(round(float(v), 6) for v in r)] for n, r in zip(names, per_class)])
    loo_header = ['member', 'AP_without', 'contribution', 'lo', 'hi']
    write_csv(osp.join(out, 'leave_one_out.csv'), loo_header,
              [[r[k] if k == 'member' else round(r[k], 6) for k in loo_header] for r in loo])
    plot_pr_curves({n: pr_curve(ev) for n, ev in evals.items()},
                   osp.join(out, 'pr_curve.png'), 'IoU 0.5, mean over categories')
    has_gt = ~np.isnan(per_class[:, -1])
    md = ['# Ensemble analysis', '', f'`{" ".join(sys.argv)}`', '', *notes, '',
          '## Members against the ensemble (COCO bbox, %; ΔAP: 95% paired bootstrap over '
          f'{len(evals[ENSEMBLE].img_ids)} images)', '', markdown(
              [*header[:7], 'ΔAP vs ensemble'], md_rows), '',
          f'## Leave-one-out ({args.method} re-fused without each member)', '',
          markdown(['member', 'AP without it', 'contribution [95% CI]'],
                   [[r['member'], fmt(r['AP_without']),
                     f"{fmt(r['contribution'])} [{fmt(r['lo'])}, {fmt(r['hi'])}]"]
                    for r in loo]) if loo else 'one member: nothing to leave out', '',
          '## Per-class AP (%)', '',
          markdown(['category', *evals], [[n, *(fmt(v) for v in r)] for n, r, g in
                                          zip(names, per_class, has_gt) if g]),
          '', '![precision-recall](pr_curve.png)', '']
    with open(osp.join(out, 'summary.md'), 'w') as f:
        f.write('\n'.join(md))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    coco = load_coco(args.ann)
    batch = load_member_batch(coco, args.preds, args.names)
    fused = load_member_batch(coco, [args.fused], [ENSEMBLE]).members[0]
    files = dict(zip(batch.names, args.preds), **{ENSEMBLE: args.fused})
    done = {name: evaluate(coco, member_results(p), files[name])
            for name, p in zip(batch.names + [ENSEMBLE], batch.members + [fused])}
    evals = {name: ev for name, (ev, _) in done.items()}
    metrics = {name: m for name, (_, m) in done.items()}
    notes = []
    warning = single_model_warning(coco, batch, args, evals[ENSEMBLE])
    if warning:
        print(warning, file=sys.stderr)
        notes.append(f'**{warning}**')
    loo = []
    if len(batch.names) > 1:
        everyone = CocoEvaluation(coco, refuse(batch, args.method, args.weights,
                                               fusion_cfg(args)), ap_only=True)
        everything = np.arange(len(everyone.img_ids))
        gap = everyone.ap(everything) - evals[ENSEMBLE].ap(everything)
        if abs(gap) > 5e-4:
            notes.append(f'Note: the members re-fused by {args.method} score AP '
                         f'{fmt(everyone.ap(everything))}, not the fused file\'s '
                         f'{fmt(evals[ENSEMBLE].ap(everything))}: the leave-one-out table '
                         'is about the re-fused ensemble (give the rule that made --fused).')
        loo = leave_one_out(coco, batch, args, everyone)
    write_report(args, coco, evals, metrics, loo, notes)
    print(f'wrote {args.out_dir}/summary.md, members.csv, per_class_ap.csv, '
          'leave_one_out.csv and pr_curve.png')


if __name__ == '__main__':
    run_cli(main)
