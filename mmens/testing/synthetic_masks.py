"""Seeded instance-mask members made from ground-truth masks (evidence without real
mask detectors).

Three members damage every ground-truth mask in their own way, by a random amount per
object: ``shifted`` moves it by up to ``2 * strength`` pixels, ``dilated`` grows it and
``eroded`` shrinks it by ``1..strength`` pixels. A member's score falls with its damage
(``1 - IoU`` with the true mask), each member misses a share of the objects, and each adds
false positives: ellipses in random boxes of random categories with low scores. Every
draw comes from ``numpy.random.RandomState(seed)``.
"""
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

MEMBERS = ('shifted', 'dilated', 'eroded')


def _grow(m: np.ndarray, k: int, grow: bool) -> np.ndarray:
    """``m`` dilated (``grow``) or eroded by ``k`` pixels (4-neighbourhood steps)."""
    m = m.astype(bool)
    for _ in range(k):
        p = np.pad(m, 1, constant_values=not grow)
        near = (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:])
        m = m | np.logical_or.reduce(near) if grow else m & np.logical_and.reduce(near)
    return m


def _shift(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        m[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _entry(mask: np.ndarray, image_id: int, category_id: int, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(image_id=image_id, category_id=category_id,
                bbox=[float(v) for v in mask_utils.toBbox(rle)], score=round(score, 4),
                segmentation=dict(size=rle['size'], counts=rle['counts'].decode('ascii')))


def _false_positive(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    bw, bh = rng.randint(8, max(9, w // 3)), rng.randint(8, max(9, h // 3))
    x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
    yy, xx = np.ogrid[:bh, :bw]
    m = np.zeros((h, w), bool)
    m[y0:y0 + bh, x0:x0 + bw] = ((xx + 0.5 - bw / 2) / (bw / 2)) ** 2 + (
        (yy + 0.5 - bh / 2) / (bh / 2)) ** 2 <= 1
    return m


def noisy_mask_members(coco: COCO, seed: int = 0, img_ids: Optional[Sequence[int]] = None,
                       strength: int = 4, miss: float = 0.15, false_positives: int = 3
                       ) -> Dict[str, List[dict]]:
    """COCO-results entries with RLE masks of the three members (:data:`MEMBERS`).

    Args:
        coco (COCO): ground truth with ``segmentation`` (crowd objects are skipped).
        seed (int): seed of every draw.
        img_ids (Sequence[int], optional): images (default all).
        strength (int): the largest damage, in pixels.
        miss (float): share of the objects that each member misses.
        false_positives (int): false positives per member and image, at most.
    """
    rng = np.random.RandomState(seed)
    cats = sorted(coco.getCatIds())
    out: Dict[str, List[dict]] = {m: [] for m in MEMBERS}
    for img_id in (sorted(coco.getImgIds()) if img_ids is None else img_ids):
        im = coco.loadImgs([img_id])[0]
        h, w = im['height'], im['width']
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=False)):
            with warnings.catch_warnings():  # pycocotools' decode under numpy 2 warns
                warnings.simplefilter('ignore', DeprecationWarning)
                full = coco.annToMask(ann).astype(bool)
            x, y, bw, bh = ann['bbox']  # the damage stays within a margin of the box
            pad = 2 * strength + 2
            x0, y0 = max(int(x) - pad, 0), max(int(y) - pad, 0)
            x1, y1 = min(int(x + bw) + pad + 1, w), min(int(y + bh) + pad + 1, h)
            gt = full[y0:y1, x0:x1]
            for name in MEMBERS:
                k = rng.randint(1, strength + 1)
                if rng.rand() < miss:
                    continue
                if name == 'shifted':
                    m = _shift(gt, *(rng.choice([-1, 1], 2) * rng.randint(1, 2 * k + 1, 2)))
                else:
                    m = _grow(gt, k, grow=name == 'dilated')
                if not m.any():
                    continue
                iou = (m & gt).sum() / (m | gt).sum()
                score = np.clip(0.3 + 0.7 * iou + rng.normal(0, 0.05), 0.05, 1.0)
                paste = np.zeros_like(full)
                paste[y0:y1, x0:x1] = m
                out[name].append(_entry(paste, img_id, ann['category_id'], float(score)))
        for name in MEMBERS:
            for _ in range(rng.randint(0, false_positives + 1)):
                out[name].append(_entry(_false_positive(rng, h, w), img_id,
                                        int(rng.choice(cats)), float(rng.uniform(0.05, 0.7))))
    return out
