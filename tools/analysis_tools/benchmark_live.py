"""Member compute saved by e2e-CEL with an image-only selection net over live members.

    python tools/analysis_tools/benchmark_live.py [--images 8] [--k 1 2]

Runs four live members (small RetinaNet and FCOS built from mmdet's own configs, each also
on the flipped image; random weights: only the compute is measured) on real images of
``data/coco_real``, fusing all of them with WBF, then with e2e-CEL selecting k members per
image from the image alone, so that only the selected members run. Prints seconds per image
and member forwards per image for each.
"""
import argparse
import json
import os.path as osp
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmens  # noqa: F401  (registers the mmens modules)
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope

from mmens.apis.dump import load_image
from mmens.utils import run_cli

DATA = osp.join(ROOT, 'data', 'coco_real')
MEMBERS = osp.join(ROOT, 'tests', 'data', 'members')
PREPROC = dict(type='EnsembleDataPreprocessor', image_preprocessor=dict(
    type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_size_divisor=32))


def members():
    out = []
    for name in ('tiny_retinanet', 'tiny_fcos'):
        base = dict(config=osp.join(MEMBERS, f'{name}.py'), checkpoint=None)
        out += [dict(base, name=name), dict(base, name=name + '-hflip', flip=True)]
    return out


def batches(num_images: int):
    ann = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    for info in sorted(ann['images'], key=lambda i: i['id'])[:num_images]:
        img = load_image(osp.join(DATA, 'images', 'val', info['file_name']))
        yield dict(inputs=[dict(img=torch.from_numpy(img).permute(2, 0, 1).contiguous())],
                   data_samples=[DetDataSample(metainfo=dict(
                       img_shape=img.shape[:2], ori_shape=img.shape[:2], img_id=info['id']))])


def timed(model, num_images: int) -> float:
    model.eval()
    data = list(batches(num_images))
    with torch.no_grad():
        model.test_step(data[0])  # warm-up
        if model.live_members is not None:
            model.live_members.runs = [0] * len(model.live_members)
        t0 = time.perf_counter()
        for d in data:
            model.test_step(d)
    return (time.perf_counter() - t0) / num_images


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=8)
    p.add_argument('--k', type=int, nargs='+', default=[1, 2])
    args = p.parse_args(argv)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    rows = []
    wbf = MODELS.build(dict(type='FusionDetector', members=members(), method='wbf',
                            data_preprocessor=PREPROC))
    s = timed(wbf, args.images)
    rows.append(('WBF of all 4 live members', s, 4.0))
    for k in args.k:
        cel = MODELS.build(dict(
            type='CELDetector', members=members(), selector=dict(k=k),
            selection_net=dict(type='MemberSelectionNet', use_meta=False, image_channels=128,
                               image_backbone=dict(type='ResNet', depth=18, base_channels=16,
                                                   out_indices=(3,))),
            data_preprocessor=PREPROC))
        s = timed(cel, args.images)
        rows.append((f'e2e-CEL, image-only net, k={k}', s,
                     sum(cel.live_members.runs) / args.images))
    print(f"{'ensemble':36s}{'s / image':>11s}{'member runs / image':>21s}")
    for name, s, runs in rows:
        print(f'{name:36s}{s:11.3f}{runs:21.2f}')
    print(f'{args.images} images of data/coco_real/images/val, CPU, '
          f'{torch.get_num_threads()} threads')


if __name__ == '__main__':
    run_cli(main)
