"""The benchmark's seeded COCO-like loads, and their packed and device forms."""
from typing import List, Tuple

import numpy as np
import torch

from mmens.ops import PackedDetections
from mmens.ops.listapi import pack_images

#: One image of a load: ``(boxes_list, scores_list, labels_list)``, one entry per member.
Image = Tuple[list, list, list]


def make_load(images: int, members: int, boxes: int, classes: int, objects: int,
              seed: int) -> List[Image]:
    """Seeded COCO-like detections, ``[(boxes_list, scores_list, labels_list)]`` per
    image (NumPy float64 boxes/scores, int64 labels).

    Each image has 1..``objects`` true objects; every member outputs ``boxes`` jittered
    copies of them (its top-``boxes`` detections, like a COCO detector): high-score
    copies are tight, low-score ones loose; the label is the object's class with
    probability 0.6, else one of 5 classes it is confused with. Statistics are close to
    data/coco_real's (about 30 vs 35 labels per image, mean (image, label) group of 17
    boxes in both, heavy tail up to ~350 vs 463 boxes). Images are drawn one after the
    other, so a load's first ``n`` images are the ``n``-image load.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        k = int(rng.integers(1, objects + 1))
        ctr = rng.uniform(0.15, 0.85, (k, 2))
        wh = np.exp(rng.uniform(np.log(0.03), np.log(0.6), (k, 2)))
        cls = rng.integers(0, classes, k)
        confuse = rng.integers(0, classes, (k, 5))
        bl, sl, ll = [], [], []
        for _m in range(members):
            src = rng.integers(0, k, boxes)  # object of each detection
            sc = np.sort(rng.beta(1.2, 4.0, boxes))[::-1]
            jit = 0.03 + 0.4 * (1 - sc[:, None])  # relative jitter
            c = ctr[src] + rng.normal(0, 1, (boxes, 2)) * jit * wh[src]
            s = wh[src] * np.exp(rng.normal(0, 1, (boxes, 2)) * jit)
            b = np.concatenate([c - s / 2, c + s / 2], 1).clip(0, 1)
            lab = np.where(rng.random(boxes) < 0.6, cls[src],
                           confuse[src, rng.integers(0, 5, boxes)])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            bl.append(b[keep])
            sl.append(sc[keep].copy())
            ll.append(lab[keep].astype(np.int64))
        out.append((bl, sl, ll))
    return out


def total_boxes(load: List[Image]) -> int:
    return sum(len(b) for bl, _, _ in load for b in bl)


def pack(load: List[Image], device: str) -> PackedDetections:
    """The packed API's input: every image of ``load`` in one batch on ``device``."""
    dets = pack_images(load).dets
    return dets._replace(labels=dets.labels.long()).to(device)


def to_device(load: List[Image], device: str) -> list:
    """The list API's input on ``device`` (torch tensors on CUDA, so the work runs
    there)."""
    if device == 'cpu':
        return load
    return [([torch.as_tensor(b, device=device) for b in bl],
             [torch.as_tensor(s, device=device) for s in sl],
             [torch.as_tensor(lab, device=device) for lab in ll])
            for bl, sl, ll in load]
