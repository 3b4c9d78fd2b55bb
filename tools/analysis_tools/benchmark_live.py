"""Wall time per image of e2e-CEL over live members as its budget falls.

    python tools/analysis_tools/benchmark_live.py [--images 8] [--extra 0 1 2 3]

Four live members (small RetinaNet and FCOS built from mmdet's own configs, each also on
the flipped image; random weights: only the compute is measured) on real images of
``data/coco_real``. Each member's seconds per image are measured first (one warm-up image,
then the mean over the images). Then: WBF of all four, and the e2e-CEL cascade of the
recommended config: the probe ``tiny_fcos`` runs on every image, a selection net reads its
detections and the image size, and a knapsack picks the members to run within the budget
less the probe and the net (``selection_seconds``). The budgets leave room for 0 to 3 more
members (``--extra``): the probe, plus that many times the dearest other member, plus
``--margin`` seconds for the net. Prints, per row, the measured wall time per image, the
member forwards per image (counted by the live members) and e2e-CEL's reported cost per
image (probe + selected + net).
"""
import argparse
import json
import os.path as osp
import time

import torch
from mmdet.structures import DetDataSample

from mmens.apis.dump import load_image
from mmens.registry import MODELS
from mmens.utils import register_all_modules, run_cli

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
MEMBERS = osp.join(ROOT, 'tests', 'data', 'members')
PROBE = 'tiny_fcos'
PREPROC = dict(type='EnsembleDataPreprocessor', image_preprocessor=dict(
    type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_size_divisor=32))


def members():
    out = []
    for name in ('tiny_fcos', 'tiny_retinanet'):
        base = dict(config=osp.join(MEMBERS, f'{name}.py'), checkpoint=None)
        out += [dict(base, name=name), dict(base, name=name + '-hflip', flip=True)]
    return out


def batches(num_images: int):
    with open(osp.join(DATA, 'annotations', 'val.json'), encoding='utf-8') as f:
        ann = json.load(f)
    for info in sorted(ann['images'], key=lambda i: i['id'])[:num_images]:
        img = load_image(osp.join(DATA, 'images', 'val', info['file_name']))
        yield dict(inputs=[dict(img=torch.from_numpy(img).permute(2, 0, 1).contiguous())],
                   data_samples=[DetDataSample(metainfo=dict(
                       img_shape=img.shape[:2], ori_shape=img.shape[:2], img_id=info['id']))])


def timed(model, data: list) -> tuple:
    """Seconds per image of ``model.test_step`` (after one warm-up image), member forwards
    per image, and the mean of the samples' ``member_seconds`` (None if absent)."""
    model.eval()
    with torch.no_grad():
        model.test_step(data[0])  # warm-up
        model.live_members.runs = [0] * len(model.live_members)
        reported = []
        t0 = time.perf_counter()
        for d in data:
            for sample in model.test_step(d):
                reported.append(sample.metainfo.get('member_seconds'))
        seconds = (time.perf_counter() - t0) / len(data)
    runs = sum(model.live_members.runs) / len(data)
    cost = None if reported[0] is None else float(torch.tensor(
        [float(r) for r in reported]).mean())
    return seconds, runs, cost


def member_seconds(model, data: list) -> list:
    """Each live member's seconds per image on the images of ``data`` (one warm-up image)."""
    live, out = model.live_members, []
    images = [d['inputs'][0]['img'].permute(1, 2, 0).numpy() for d in data]
    with torch.no_grad():
        for m in range(len(live)):
            live.predict_member(m, images[:1])  # warm-up
            t0 = time.perf_counter()
            for img in images:
                live.predict_member(m, [img])
            out.append((time.perf_counter() - t0) / len(images))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=8)
    p.add_argument('--extra', type=int, nargs='+', default=[3, 2, 1, 0],
                   help='budgets with room for the probe and this many more members')
    p.add_argument('--margin', type=float, default=0.02,
                   help='seconds of each budget left for the selection net')
    args = p.parse_args(argv)
    register_all_modules()  # default scope 'mmens', as the configs'
    torch.manual_seed(0)
    data = list(batches(args.images))
    wbf = MODELS.build(dict(type='FusionDetector', members=members(), method='wbf',
                            data_preprocessor=PREPROC))
    seconds = member_seconds(wbf, data)
    names = [m['name'] for m in members()]
    rows = [('WBF of all 4 live members', None) + timed(wbf, data)]
    probe_s = seconds[names.index(PROBE)]
    dearest = max(s for n, s in zip(names, seconds) if n != PROBE)
    for extra in args.extra:
        budget = probe_s + extra * dearest + args.margin
        cel = MODELS.build(dict(
            type='CELDetector', members=members(), member_seconds=seconds, probes=[PROBE],
            selection_net=dict(type='MemberSelectionNet', hidden=32),
            selector=dict(budget=budget), data_preprocessor=PREPROC))
        rows.append((f'e2e-CEL, probe {PROBE}, budget', budget) + timed(cel, data))
    print('member seconds per image: ' + ', '.join(
        f'{n} {s:.3f}' for n, s in zip(names, seconds)))
    print(f"| ensemble | budget s / image | wall s / image | member runs / image "
          f"| reported s / image (probe + members + net) |\n|---|---:|---:|---:|---:|")
    for name, budget, s, runs, cost in rows:
        print(f"| {name} | {'' if budget is None else format(budget, '.3f')} | {s:.3f} "
              f"| {runs:.2f} | {'' if cost is None else format(cost, '.3f')} |")
    print(f'{args.images} images of data/coco_real/images/val, CPU, '
          f'{torch.get_num_threads()} threads')


if __name__ == '__main__':
    run_cli(main)
