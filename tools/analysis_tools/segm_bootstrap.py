"""Mask AP of a fused COCO-results file and of its members, with paired bootstrap intervals.

    python tools/analysis_tools/segm_bootstrap.py --ann GT.json --fused fused.json \\
        --members A.json B.json C.json [--samples 100 --seed 0]

Every file's entries carry ``segmentation`` (as ``fuse_results.py --out`` writes them for
members with masks). Prints the mask AP of each file and, per member, the 95% interval of
``AP(fused) - AP(member)`` over bootstrap resamples of the images (the same resamples for
every member: paired; the compiled accumulator of ``mmens.evaluation.fast_coco_ap``), with
the share of resamples where the fusion wins.
"""
import argparse
import json
import os.path as osp

from mmens.apis.member_files import load_coco
from mmens.evaluation.coco_eval import paired_bootstrap
from mmens.evaluation.segm_eval import SegmEvaluation
from mmens.utils.cli import run_cli
from mmens.utils.paths import check_member_files


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='segm AP with paired bootstrap intervals')
    p.add_argument('--ann', required=True, help='COCO annotations with segmentation')
    p.add_argument('--fused', required=True, help='the fused COCO-results file (masks)')
    p.add_argument('--members', nargs='+', required=True, help='member files (masks)')
    p.add_argument('--samples', type=int, default=500, help='bootstrap resamples')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_member_files(args.ann, [args.fused] + args.members)
    if args.samples < 10:
        raise ValueError(f'--samples must be at least 10, got {args.samples}')
    coco = load_coco(args.ann)
    fused = SegmEvaluation(coco, json.load(open(args.fused)))
    print(f"{'file':24}{'segm AP':>9}{'fused - it [95% interval]':>36}{'p_better':>10}")
    print(f"{osp.basename(args.fused):24}{fused.metrics()['AP']:9.4f}")
    for path in args.members:
        member = SegmEvaluation(coco, json.load(open(path)))
        b = paired_bootstrap(fused, member, args.samples, args.seed)
        print(f"{osp.basename(path):24}{member.metrics()['AP']:9.4f}"
              f"{b['diff']:+14.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}]{b['p_better']:10.2f}")


if __name__ == '__main__':
    run_cli(main)
