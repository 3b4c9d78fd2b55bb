"""A COCO-val-sized fusion load from the embedded real val split (seeded, rerunnable).

Replicates the 80 val images of ``data/coco_real`` (annotations and the six members'
COCO-results files: three detectors and their ``-hflip`` variants) to ``--images`` images,
for timing ``fuse_results.py`` on as many images as COCO val2017 (5,000) holds::

    python tools/analysis_tools/make_coco_load.py --images 5040 --out-dir work_dirs/coco_load
    /usr/bin/time -v python tools/analysis_tools/fuse_results.py \\
        --ann work_dirs/coco_load/annotations.json \\
        --preds work_dirs/coco_load/predictions/*.json --method wbf --no-eval \\
        --out work_dirs/coco_load/fused.json

Copy ``k`` of source image ``id`` gets the image id ``id + k * 1_000_000`` (copy 0 keeps
the real ids; the val ids are below 10**6). Copies ``k > 0`` are jittered, seeded, so that
they are different detections rather than byte copies: each box moves by up to 0.5 px
(kept inside the image and written with the source's 2 decimals) and each score is
scaled by a factor in [0.95, 1] (5 decimals, as the source). Annotations are copied with
new sequential ids, so ``--ann`` also scores the fused output. With 5,040 images (63
copies) the six files hold about 290 MB and 2.9 million detections.
"""
import argparse
import gc
import json
import os
import os.path as osp

import numpy as np
import orjson

DATA = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..', 'data', 'coco_real')
ID_STRIDE = 1_000_000  # above every COCO val2017 image id


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=5040,
                   help='images of the load (a multiple of 80 keeps every copy whole)')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--data', default=DATA, help='the coco_real folder to replicate')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def _copy_of(k: int, n_src: int, n_images: int) -> int:
    """How many source images copy ``k`` takes (the last copy may be partial)."""
    return max(0, min(n_src, n_images - k * n_src))


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ann = json.load(open(osp.join(args.data, 'annotations', 'val.json'), encoding='utf-8'))
    src_ids = sorted(im['id'] for im in ann['images'])
    n_src, copies = len(src_ids), -(-args.images // len(src_ids))
    taken = [set(src_ids[:_copy_of(k, n_src, args.images)]) for k in range(copies)]
    sizes = {im['id']: (im['width'], im['height']) for im in ann['images']}

    images, annotations = [], []
    for k in range(copies):
        for im in ann['images']:
            if im['id'] in taken[k]:
                images.append(dict(im, id=im['id'] + k * ID_STRIDE))
        for a in ann['annotations']:
            if a['image_id'] in taken[k]:
                annotations.append(dict(a, image_id=a['image_id'] + k * ID_STRIDE,
                                        id=len(annotations) + 1))
    os.makedirs(osp.join(args.out_dir, 'predictions'), exist_ok=True)
    gc.disable()  # millions of acyclic dicts: the collector would only rescan them
    with open(osp.join(args.out_dir, 'annotations.json'), 'wb') as f:
        f.write(orjson.dumps(dict(ann, images=images, annotations=annotations)))

    pred_dir = osp.join(args.data, 'predictions', 'val')
    total = 0
    for fname in sorted(os.listdir(pred_dir)):
        src = json.load(open(osp.join(pred_dir, fname), encoding='utf-8'))
        img = np.array([e['image_id'] for e in src], dtype=np.int64)
        cat = np.array([e['category_id'] for e in src], dtype=np.int64)
        box = np.array([e['bbox'] for e in src], dtype=np.float64)  # [M, 4] xywh
        score = np.array([e['score'] for e in src], dtype=np.float64)
        wh = np.array([sizes[int(i)] for i in img], dtype=np.float64)  # [M, 2]
        # compact, as the source files; one copy at a time, so that the memory stays that
        # of one copy at any --images (the bytes of orjson.dumps of the whole list)
        with open(osp.join(args.out_dir, 'predictions', fname), 'wb') as f:
            f.write(b'[')
            sep = b''
            for k in range(copies):
                keep = np.isin(img, list(taken[k]))
                b, s = box[keep].copy(), score[keep]
                if k:  # drawn for every entry of the member: copy k is the same for any --images
                    shift = rng.uniform(-0.5, 0.5, (len(box), 2))[keep]
                    factor = rng.uniform(0.95, 1.0, len(box))[keep]
                    b[:, :2] = np.clip(b[:, :2] + shift, 0, np.maximum(wh[keep] - b[:, 2:], 0))
                    b, s = b.round(2), (s * factor).round(5)
                out = [dict(image_id=int(i) + k * ID_STRIDE, category_id=int(c), bbox=bb,
                            score=sc)
                       for i, c, bb, sc in zip(img[keep], cat[keep], b.tolist(), s.tolist())]
                if out:
                    f.write(sep + orjson.dumps(out)[1:-1])
                    sep = b','
                total += len(out)
            f.write(b']')
    print(f'wrote {len(images)} images, {len(annotations)} annotations and {total} '
          f'detections of {len(os.listdir(pred_dir))} members to {args.out_dir}')


if __name__ == '__main__':
    main()
