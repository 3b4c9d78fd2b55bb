"""Fixed-rule ensembles for the benchmark: mmens rules, the ensemble-boxes reference, and
WBF with member weights grid-searched on training folds.

A helper module of the report tools in tools/analysis_tools (not part of the installed
package; the ensemble-boxes reference is a test and report requirement only).
"""
import itertools
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO

from cross_val import subset_batch
from mmens.apis.inference import build_fixed_ensemble, fuse_batch
from mmens.apis.member_files import MemberBatch, results_to_coco
from mmens.evaluation.coco_eval import CocoEvaluation


def run_fixed(batch: MemberBatch, method: str, **fusion_cfg) -> Tuple[List[dict], float]:
    """Fuse every image with a fixed rule; returns results and ms per image."""
    model = build_fixed_ensemble(batch.names, method, **fusion_cfg)
    fuse_batch(model, subset_batch(batch, batch.img_ids[:4]))  # warm-up
    results, seconds = fuse_batch(model, batch)
    return results, 1000.0 * seconds / max(1, len(batch.img_ids))


def run_ensemble_boxes_wbf(batch: MemberBatch, weights: Optional[Sequence[float]] = None,
                           iou_thr: float = 0.55, skip_box_thr: float = 0.0,
                           max_per_img: int = 100) -> Tuple[List[dict], float]:
    """The reference: ``ensemble_boxes.weighted_boxes_fusion`` one image at a time (NumPy)."""
    from ensemble_boxes import weighted_boxes_fusion
    p = batch.packed
    n = len(batch.names)
    order = torch.argsort(p['images'], stable=True)
    imgs = p['images'][order].numpy()
    starts = np.searchsorted(imgs, np.arange(len(batch.img_ids) + 1))
    boxes_all = p['bboxes'][order].numpy().astype(np.float64)
    scores_all, labels_all = p['scores'][order].numpy(), p['labels'][order].numpy()
    members_all = p['members'][order].numpy()
    sizes = p['image_sizes'].numpy().astype(np.float64)
    out_b, out_s, out_l, out_i = [], [], [], []
    seconds = 0.0
    for i in range(len(batch.img_ids)):
        s, e = starts[i], starts[i + 1]
        wh = np.tile(sizes[i], 2)
        mem = members_all[s:e]
        b_list = [boxes_all[s:e][mem == m] / wh for m in range(n)]
        s_list = [scores_all[s:e][mem == m] for m in range(n)]
        l_list = [labels_all[s:e][mem == m] for m in range(n)]
        t0 = time.perf_counter()
        b, sc, lb = weighted_boxes_fusion(b_list, s_list, l_list, weights=weights,
                                          iou_thr=iou_thr, skip_box_thr=skip_box_thr)
        seconds += time.perf_counter() - t0
        keep = np.argsort(-sc, kind='stable')[:max_per_img]
        out_b.append(b[keep] * wh)
        out_s.append(sc[keep])
        out_l.append(lb[keep].astype(np.int64))
        out_i.append(np.full(len(keep), i))
    results = results_to_coco(torch.from_numpy(np.concatenate(out_b)),
                              torch.from_numpy(np.concatenate(out_s)),
                              torch.from_numpy(np.concatenate(out_l)),
                              torch.from_numpy(np.concatenate(out_i)), batch.img_ids,
                              batch.cat_ids)
    return results, 1000.0 * seconds / max(1, len(batch.img_ids))


def weight_grid(names: Sequence[str], values: Sequence[float] = (1.0, 2.0, 3.0),
                tie_flips: bool = True) -> List[Tuple[float, ...]]:
    """Member weight vectors to search. With ``tie_flips`` a member and its ``-hflip``
    variant share a weight (3 detectors x 3 values = 27 vectors instead of 3^6 = 729)."""
    base = [n[:-len('-hflip')] if tie_flips and n.endswith('-hflip') else n for n in names]
    groups = list(dict.fromkeys(base))
    grid = []
    for combo in itertools.product(values, repeat=len(groups)):
        w = dict(zip(groups, combo))
        if min(combo) == max(combo) and combo[0] != values[0]:
            continue  # equal weights: one representative is enough
        grid.append(tuple(w[b] for b in base))
    return grid


def wbf_grid_evaluations(batch: MemberBatch, coco: COCO,
                         grid: Sequence[Sequence[float]], iou_thr: float = 0.55
                         ) -> List[Tuple[List[dict], CocoEvaluation]]:
    """WBF of every image with each weight vector of ``grid``: its results and their
    per-image COCO evaluation (AP over any set of images is then cheap, see
    :meth:`CocoEvaluation.ap`; WBF of an image does not depend on the other images)."""
    out = []
    for weights in grid:
        model = build_fixed_ensemble(batch.names, 'wbf', weights=list(weights),
                                     iou_thr=iou_thr)
        res, _ = fuse_batch(model, batch)
        out.append((res, CocoEvaluation(coco, res, batch.img_ids, ap_only=True)))
    return out


def best_grid_index(evaluations: Sequence[Tuple[List[dict], CocoEvaluation]],
                    positions: np.ndarray) -> int:
    """The grid entry with the highest AP on ``positions`` (ties: the first)."""
    return int(np.argmax([ev.ap(positions) for _, ev in evaluations]))


def grid_search_wbf(batch: MemberBatch, coco: COCO, train_ids: Sequence[int],
                    grid: Sequence[Sequence[float]], iou_thr: float = 0.55
                    ) -> Tuple[Dict, float]:
    """Best WBF ``weights`` by COCO AP on ``train_ids``; returns cfg, seconds."""
    t0 = time.perf_counter()
    sub = subset_batch(batch, train_ids)
    evals = wbf_grid_evaluations(sub, coco, grid, iou_thr)
    best = grid[best_grid_index(evals, np.arange(len(sub.img_ids)))]
    return dict(weights=list(best), iou_thr=iou_thr), time.perf_counter() - t0


def grid_wbf_out_of_fold(batch: MemberBatch, coco: COCO, folds: list,
                         grid: Sequence[Sequence[float]], iou_thr: float = 0.55
                         ) -> Tuple[List[dict], List[List[float]], float]:
    """WBF with weights grid-searched on each fold's training images, applied to its
    held-out images: the out-of-fold results, each fold's weights and the seconds.

    Equal to :func:`grid_search_wbf` per fold followed by WBF of the held-out images,
    with each weight vector fused and evaluated once instead of once per fold.

    Args:
        folds: ``(train, held-out)`` positions in ``batch.img_ids`` per fold.
    """
    t0 = time.perf_counter()
    evals = wbf_grid_evaluations(batch, coco, grid, iou_thr)
    results, chosen = [], []
    for train, test in folds:
        best = best_grid_index(evals, train)
        held_out = {batch.img_ids[i] for i in test}
        results += [r for r in evals[best][0] if r['image_id'] in held_out]
        chosen.append(list(grid[best]))
    return results, chosen, time.perf_counter() - t0
