"""Synthetic instance-mask members from ground-truth masks (seeded, rerunnable).

Three members damage every (non-crowd) ground-truth mask of ``--ann`` in their own way,
by a random amount per object: ``shifted`` (moved by up to ``2 * --strength`` pixels),
``dilated`` and ``eroded`` (by 1 to ``--strength`` pixels). A member's score falls with
its damage (``0.3 + 0.7 * IoU`` with the true mask, plus noise), each member misses
``--miss`` of the objects and adds up to ``--false-positives`` ellipses of random
categories per image (:mod:`mmens.testing.synthetic_masks`). The files are COCO results
with RLE ``segmentation``, to be fused by ``fuse_results.py``::

    python tools/analysis_tools/make_mask_members.py --out-dir work_dirs/mask_members
    python tools/analysis_tools/fuse_results.py --ann data/coco_real/annotations/val.json \\
        --preds work_dirs/mask_members/*.json --metrics-out work_dirs/mask_members/m.json
"""
import argparse
import os
import os.path as osp

import orjson

from mmens.apis.member_files import load_coco
from mmens.testing.synthetic_masks import noisy_mask_members
from mmens.utils.cli import run_cli
from mmens.utils.paths import check_input_file, check_output_dir

DATA = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..', 'data', 'coco_real')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='noisy mask members from ground-truth masks')
    p.add_argument('--ann', default=osp.join(DATA, 'annotations', 'val.json'),
                   help='COCO annotations with segmentation (default: the embedded val)')
    p.add_argument('--out-dir', required=True, help='one <member>.json per member here')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--strength', type=int, default=4, help='largest damage, in pixels')
    p.add_argument('--miss', type=float, default=0.15, help='share of objects missed')
    p.add_argument('--false-positives', type=int, default=3,
                   help='false positives per member and image, at most')
    p.add_argument('--images', type=int, help='the first N images only (default all)')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_input_file(args.ann, '--ann')
    check_output_dir(args.out_dir, '--out-dir')
    if args.strength < 1 or not 0 <= args.miss < 1 or args.false_positives < 0:
        raise ValueError('--strength must be >= 1, --miss in [0, 1), --false-positives '
                         f'>= 0; got {args.strength}, {args.miss}, {args.false_positives}')
    coco = load_coco(args.ann)
    img_ids = sorted(coco.getImgIds())[:args.images]
    members = noisy_mask_members(coco, seed=args.seed, img_ids=img_ids,
                                 strength=args.strength, miss=args.miss,
                                 false_positives=args.false_positives)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, entries in members.items():
        path = osp.join(args.out_dir, f'{name}.json')
        with open(path, 'wb') as f:
            f.write(orjson.dumps(entries))
        print(f'wrote {len(entries)} detections with masks on {len(img_ids)} images to {path}')


if __name__ == '__main__':
    run_cli(main)
