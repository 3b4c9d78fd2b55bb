"""fuse_results' path for members with instance masks (files that carry ``segmentation``).

The boxes are read and validated as without masks (``load_member_batch``, all images at
once: this path holds the masks of every member in memory); then the masks are read and
checked (one line per bad mask, naming member, file, entry and image),
WBF fuses the boxes and each kept cluster's masks (:mod:`mmens.apis.mask_fusion`), and
the boxes and masks are scored: bbox AP as without masks, ``segm`` AP next to it.
Masks are fused with WBF only, in this process (``--workers`` is for box-only members),
over all images (``--shard`` is refused).
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional

import orjson

from mmens.apis.mask_fusion import (fuse_masks_batch, load_batch_masks, mask_results,
                                    member_mask_results)
from mmens.apis.member_files import load_member_batch
from mmens.datasets.coco_masks import file_has_masks
from mmens.evaluation.coco_eval import coco_metrics
from mmens.evaluation.segm_eval import coco_segm_metrics


def files_with_masks(args: argparse.Namespace) -> bool:
    """Whether the member files carry masks; the options that masks cannot take, refused
    with one line before any file is decoded."""
    if not any(file_has_masks(f) for f in args.preds):
        return False
    if args.method != 'wbf':
        raise ValueError('instance masks are fused over WBF clusters: use --method wbf '
                         f'(got --method {args.method})')
    if getattr(args, 'shard', None):
        raise ValueError('--shard is for box-only members: the member files carry masks')
    if args.repair:
        raise ValueError('--repair drops entries, and the member files carry masks that '
                         'must stay aligned with their boxes: fix the files instead '
                         '(validate_predictions.py names each bad entry)')
    return True


def _table(title: str, rows: Dict[str, dict]) -> None:
    width = max(len(n) for n in rows) + 2
    print(f"{title:{width}}{'AP':>8}{'AP50':>8}{'AP75':>8}")
    for name, m in rows.items():
        print(f"{name:{width}}{m['AP']:8.4f}{m['AP50']:8.4f}{m['AP75']:8.4f}")


def _scores(coco, members: Dict[str, List[dict]], fused: List[dict], score, method: str
            ) -> dict:
    """``{members: {name: metrics}, fusion: metrics}`` by ``score(coco, results)``."""
    out = dict(members={n: score(coco, r) for n, r in members.items()},
               fusion=score(coco, fused))
    _table('bbox' if score is coco_metrics else 'segm',
           {**out['members'], f'fusion ({method})': out['fusion']})
    return out


def fuse_masks(args: argparse.Namespace, coco, model, cat_ids: Optional[List[int]]) -> None:
    """Read, fuse, score, print and write (``--out``, ``--metrics-out``) members with
    masks. The metrics are those of the box-only path (``members``, ``fusion``: bbox),
    and ``segm: {members: {name: {AP, ...}}, fusion: {AP, ...}}`` next to them."""
    t0 = time.perf_counter()
    names = args.names or [osp.splitext(osp.basename(f))[0] for f in args.preds]
    batch = load_member_batch(coco, args.preds, names, cat_ids=cat_ids)
    runs = load_batch_masks(batch, args.preds)
    print(f'read {len(runs)} boxes and masks in {time.perf_counter() - t0:.2f} s')
    fused, rles, seconds = fuse_masks_batch(model, batch, runs, chunk=args.chunk,
                                            mask_thr=args.mask_thr, vote=args.mask_vote)
    results = mask_results(fused, rles)
    ms = 1000.0 * seconds / max(1, len(batch.img_ids))
    metrics = dict(members={}, fusion=dict(method=args.method, ms_per_image=ms,
                                           mask_thr=args.mask_thr, mask_vote=args.mask_vote))
    if not args.no_eval:
        members = member_mask_results(batch, runs, coco)
        bbox = _scores(coco, members, results, coco_metrics, args.method)
        metrics['members'] = bbox['members']
        metrics['fusion'].update(bbox['fusion'])
        metrics['segm'] = _scores(coco, members, results, coco_segm_metrics, args.method)
    print(f'fused {len(batch.img_ids)} images with masks in {seconds:.3f} s '
          f'({ms:.3f} ms per image)')
    for path in (args.out, args.metrics_out):
        if path and osp.dirname(path):
            os.makedirs(osp.dirname(path), exist_ok=True)
    if args.out:
        with open(args.out, 'wb') as f:
            f.write(orjson.dumps(results))
        print(f'wrote {len(results)} detections with masks to {args.out}')
    if args.metrics_out:
        with open(args.metrics_out, 'w', encoding='utf-8') as f:
            json.dump(metrics, f, indent=1)
