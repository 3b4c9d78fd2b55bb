"""Members with instance masks: WBF of the boxes, and the fused mask of each cluster.

The boxes are fused by WBF exactly as without masks (:func:`~mmens.ops.match_boxes`
gives the same clusters, boxes and scores as ``weighted_boxes_fusion_packed``, and the
cluster of every input box); each kept cluster's mask is the weighted mean of its boxes'
masks, with the weights of WBF's fused box (score times member weight), thresholded
(:func:`~mmens.ops.masks.fuse_cluster_masks`). Used by ``fuse_results.py`` whenever the
member files carry ``segmentation``.
"""
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO

from mmens.datasets.coco_masks import read_member_masks
from mmens.evaluation.coco_eval import arrays_to_results, results_to_arrays
from mmens.evaluation.fast_coco_ap import DetectionArrays
from mmens.models.mask_fusion import encode_runs, fuse_packed_masks
from mmens.ops.masks import MaskRuns
from .inference import member_remap
from .member_files import MemberBatch, member_results

__all__ = ['load_batch_masks', 'fuse_packed_masks', 'fuse_masks_batch', 'mask_results',
           'member_mask_results']


def load_batch_masks(batch: MemberBatch, files: Sequence[str]) -> MaskRuns:
    """The masks of every box of ``batch`` (read without repair), in its packed order."""
    sizes = dict(zip(batch.img_ids, map(tuple, batch.packed['image_sizes'].long().tolist())))
    return MaskRuns.cat([read_member_masks(f, m.name, sizes, m.image_ids)
                         for f, m in zip(files, batch.members)])


def fuse_masks_batch(model, batch: MemberBatch, runs: MaskRuns, chunk: int = 256,
                     mask_thr: float = 0.5, vote: bool = False, max_per_img: int = 100
                     ) -> Tuple[DetectionArrays, List[dict], float]:
    """WBF of ``batch`` with fused masks, ``chunk`` images at a time.

    Args:
        model (FixedEnsemble): a WBF ensemble (``method='wbf'``: its weights and keyword
            arguments are the clustering's).
        batch (MemberBatch): the members' boxes. runs (MaskRuns): their masks
            (:func:`load_batch_masks`).
        chunk (int): images per step. mask_thr, vote: see
            :func:`~mmens.ops.masks.fuse_cluster_masks`.
        max_per_img (int): clusters kept per image (the highest scores).

    Returns:
        tuple: the fused detections (as ``fuse_batch_arrays``: by image, then score), one
        RLE ``segmentation`` dict per detection, and the seconds spent fusing.
    """
    if getattr(model, 'method', None) != 'wbf':
        raise ValueError('instance masks are fused over WBF clusters: use --method wbf '
                         f'(got {getattr(model, "method", type(model).__name__)})')
    remap = member_remap(model.members, batch.names)
    packed = dict(batch.packed)
    packed['members'] = remap[packed['members']]
    arrays, rles, seconds = [], [], 0.0
    for start in range(0, len(batch.img_ids), chunk):
        t0 = time.perf_counter()
        idx = torch.nonzero((packed['images'] >= start)
                            & (packed['images'] < start + chunk)).flatten()
        part = {k: v[idx] for k, v in packed.items() if k != 'image_sizes'}
        part['images'] = part['images'] - start
        part['image_sizes'] = packed['image_sizes'][start:start + chunk]
        (boxes, scores, labels, images), part_rles = fuse_packed_masks(
            model, part, runs.select(idx), mask_thr, vote, max_per_img)
        seconds += time.perf_counter() - t0
        arrays.append(results_to_arrays(boxes, scores, labels, images + start,
                                        batch.img_ids, batch.cat_ids))
        rles += part_rles
    if not arrays:
        ids = np.zeros(0, dtype=np.int64)
        return DetectionArrays(ids, ids, np.zeros((0, 4)), np.zeros(0)), [], seconds
    return DetectionArrays(*(np.concatenate(c) for c in zip(*arrays))), rles, seconds


def mask_results(fused: DetectionArrays, rles: List[dict]) -> List[dict]:
    """COCO-results entries with ``segmentation``."""
    results = arrays_to_results(fused)
    for r, seg in zip(results, rles):
        r['segmentation'] = seg
    return results


def member_mask_results(batch: MemberBatch, runs: MaskRuns, coco: COCO) -> Dict[str, list]:
    """Each member's validated entries with their masks (for scoring the members)."""
    out, start = {}, 0
    for m in batch.members:
        part = runs.select(torch.arange(start, start + len(m)))
        imgs = coco.loadImgs(m.image_ids.tolist())
        h = torch.tensor([im['height'] for im in imgs], dtype=torch.long)
        w = torch.tensor([im['width'] for im in imgs], dtype=torch.long)
        results = member_results(m)
        for r, seg in zip(results, encode_runs(part, h, w)):
            r['segmentation'] = seg
        out[m.name] = results
        start += len(m)
    return out
