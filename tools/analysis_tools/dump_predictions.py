"""Run mmdet detectors over a COCO image set and write one COCO-results JSON per member.

Examples::

    python tools/analysis_tools/dump_predictions.py retinanet.py retinanet.pth \\
        --ann data/coco_real/annotations/val.json --img-dir data/coco_real/images/val \\
        --out work_dirs/preds/retinanet.json --tta-flip
    python tools/analysis_tools/dump_predictions.py a.py a.pth b.py b.pth --ann GT.json --img-dir DIR \\
        --out a.json b.json

The files hold every box the detector keeps under ``--score-thr`` / ``--max-per-img``
(low-score boxes matter to fusion), in the format the cached-prediction path of the
ensemble reads (``CocoEnsembleDataset``, ``tools/analysis_tools/fuse_results.py``); each written file is
validated against the annotation file. ``--tta-flip`` also writes ``<out>-hflip.json``,
the member run on horizontally flipped images with its boxes flipped back.
"""
import argparse
import json
import os
import os.path as osp

import mmens  # noqa: F401  (registers the mmens modules)
from mmens.apis.dump import dump_members, flip_member
from mmens.apis.member_files import load_coco
from mmens.datasets.coco_results import validate_coco_results
from mmens.models.live_members import LiveMembers
from mmens.utils import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='dump mmdet detector predictions as COCO results')
    p.add_argument('models', nargs='+', metavar='CONFIG CHECKPOINT',
                   help='pairs of mmdet config and checkpoint (checkpoint "none": the '
                   "config's initial weights)")
    p.add_argument('--ann', required=True, help='COCO annotation file (the images to run on)')
    p.add_argument('--img-dir', required=True, help='directory of the images')
    p.add_argument('--out', nargs='+', required=True, help='one output JSON per member')
    p.add_argument('--tta-flip', action='store_true',
                   help='also write <out>-hflip.json from horizontally flipped images')
    p.add_argument('--score-thr', type=float, default=0.001,
                   help='keep boxes scoring at least this (default 0.001)')
    p.add_argument('--max-per-img', type=int, default=100, help='boxes per image (default 100)')
    p.add_argument('--batch-size', type=int, default=1, help='images per forward')
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if len(args.models) % 2:
        raise ValueError(f'give CONFIG CHECKPOINT pairs; got {len(args.models)} paths')
    pairs = list(zip(args.models[0::2], args.models[1::2]))
    if len(args.out) != len(pairs):
        raise ValueError(f'--out names {len(args.out)} files for {len(pairs)} members')
    if args.batch_size < 1:
        raise ValueError('--batch-size must be at least 1')
    coco = load_coco(args.ann)
    specs, outs = [], []
    for (config, ckpt), out in zip(pairs, args.out):
        name = osp.splitext(osp.basename(out))[0]
        base = dict(config=config, checkpoint=None if ckpt.lower() == 'none' else ckpt,
                    score_thr=args.score_thr, max_per_img=args.max_per_img)
        specs.append(dict(base, name=name))
        outs.append(out)
        if args.tta_flip:
            specs.append(flip_member(specs[-1]))
            outs.append(osp.splitext(out)[0] + '-hflip.json')
    live = LiveMembers(specs)
    results = dump_members(live, coco, args.img_dir, batch_size=args.batch_size,
                           device=args.device)
    sizes = {im['id']: (im['width'], im['height']) for im in coco.loadImgs(coco.getImgIds())}
    for name, out in zip(live.names, outs):
        entries = results[name]
        validate_coco_results(entries, name, sizes, coco.getCatIds(), source=out)
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w', encoding='utf-8') as f:
            json.dump(entries, f)
        n_img = len({e['image_id'] for e in entries})
        dropped = live.num_degenerate.get(name, 0)
        print(f'{name}: wrote {out} ({len(entries)} boxes on {n_img} of {len(sizes)} images'
              + (f'; left out {dropped} boxes of zero width or height' if dropped else '')
              + ')')


if __name__ == '__main__':
    run_cli(main)
