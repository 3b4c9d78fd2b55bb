"""COCO AP of any per-image choice among fixed member subsets, and the per-image oracles.

An e2e-CEL selection picks, per image, one subset of the members; WBF fuses each image on
its own, so the fused output of a selection is, image by image, the fused output of that
image's subset. :class:`SubsetTables` holds pycocotools' matching of every subset's fused
output once, as S × I virtual images (subset s, image i ↦ ``s * I + i``); the COCO AP of a
selection is then one row of image positions for the compiled accumulator of
:mod:`mmens.evaluation.fast_coco_ap`, and hundreds of candidate selections are one call.

Two ceilings of what a selector can gain over a fixed subset (both read the ground truth):

- :func:`per_image_oracle`: per image, the feasible subset with the highest AP of that image
  alone (COCO AP over one image: it ignores false positives of classes absent from the
  image and cannot see how an image's scores rank against the other images'), ties kept at
  a given default subset;
- :func:`greedy_oracle`: per image in turn, the feasible subset that raises the AP of the
  whole selection most, until no image changes: the dataset's AP, which a per-image AP
  does not add up to.

A helper module of the report tools in tools/analysis_tools (not part of the installed
package).
"""
from typing import List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from mmens.evaluation.fast_coco_ap import coco_ap_tables, pool_tables, resample_aps


class SubsetTables:
    """The matching of ``S`` fused outputs of the same ``I`` images, for the COCO AP of any
    per-image choice among them.

    Args:
        coco_gt (COCO): the ground truth.
        results (Sequence[list[dict]]): ``S`` COCO-results lists (e.g. WBF of each subset).
        img_ids (Sequence[int]): the ``I`` images, in the order of the choices' columns.
    """

    def __init__(self, coco_gt: COCO, results: Sequence[List[dict]],
                 img_ids: Sequence[int]) -> None:
        params = Params(iouType='bbox')
        self.rec_thrs = params.recThrs
        self.num_images, self.num_subsets = len(img_ids), len(results)
        per = [coco_ap_tables(coco_gt, r, list(img_ids), params.iouThrs, params.maxDets[-1])
               for r in results]  # S lists of K tables (None: no detection, no ground truth)
        self.pooled = pool_tables([self._stack([p[k] for p in per])
                                   for k in range(len(per[0]))])

    def _stack(self, tables: List[Optional[dict]]) -> Optional[dict]:
        """One category's tables of the S outputs as one table of S × I images."""
        if all(t is None for t in tables):
            return None
        zeros = np.zeros(self.num_images, np.int64)
        num_t = next(t['tp'].shape[0] for t in tables if t is not None)
        empty = dict(scores=np.zeros(0), tp=np.zeros((num_t, 0), bool),
                     fp=np.zeros((num_t, 0), bool), count=zeros, npig=zeros)
        tables = [t if t is not None else empty for t in tables]
        count = np.concatenate([t['count'] for t in tables])  # [S * I]
        return dict(scores=np.concatenate([t['scores'] for t in tables]),
                    tp=np.concatenate([t['tp'] for t in tables], 1),
                    fp=np.concatenate([t['fp'] for t in tables], 1),
                    start=np.cumsum(count) - count, count=count,
                    npig=np.concatenate([t['npig'] for t in tables]))

    def ap(self, choice: np.ndarray, positions: Optional[np.ndarray] = None) -> np.ndarray:
        """COCO AP of each row of ``choice [R, I]`` (subset index per image), over the
        images ``positions`` (default all, in order; repeats allowed): ``[R]``."""
        choice = np.atleast_2d(np.asarray(choice, dtype=np.int64))
        if positions is None:
            positions = np.arange(self.num_images)
        samples = choice[:, positions] * self.num_images + positions[None]  # [R, P]
        return resample_aps(self.pooled, self.rec_thrs, samples)

    def fixed_ap(self, subsets: Sequence[int], positions: np.ndarray) -> np.ndarray:
        """``[len(subsets)]`` AP of each fixed subset on the images ``positions``."""
        choice = np.repeat(np.asarray(subsets, dtype=np.int64)[:, None], self.num_images, 1)
        return self.ap(choice, positions)

    def per_image_ap(self) -> np.ndarray:
        """``[S, I]`` AP of each subset on each image alone (0 for an image without ground
        truth of any class it is scored on)."""
        s, i = np.meshgrid(np.arange(self.num_subsets), np.arange(self.num_images),
                           indexing='ij')
        samples = (s * self.num_images + i).reshape(-1, 1)  # [S * I, 1]
        return resample_aps(self.pooled, self.rec_thrs, samples).reshape(s.shape)


def per_image_oracle(per_image_ap: np.ndarray, feasible: Sequence[int],
                     default: np.ndarray) -> np.ndarray:
    """Per image, the feasible subset with the highest AP of that image; an image keeps its
    ``default [I]`` subset unless another is strictly better (so ties, e.g. images where
    every subset scores 0, do not move). Returns ``[I]`` subset indices."""
    feasible = np.asarray(feasible, dtype=np.int64)
    cols = np.arange(per_image_ap.shape[1])
    ap = per_image_ap[feasible]  # [F, I]
    best = feasible[ap.argmax(0)]  # [I]
    return np.where(ap.max(0) > per_image_ap[default, cols], best, default)


def greedy_oracle(tables: SubsetTables, feasible: Sequence[int], start: np.ndarray,
                  max_sweeps: int = 3) -> np.ndarray:
    """Coordinate ascent on the AP of the whole selection: image by image, the feasible
    subset that raises it most (every candidate of an image in one batched call), sweeps
    until no image changes (at most ``max_sweeps``). Returns ``[I]`` subset indices."""
    feasible = np.asarray(feasible, dtype=np.int64)
    choice = np.asarray(start, dtype=np.int64).copy()
    for _ in range(max_sweeps):
        changed = False
        for i in range(tables.num_images):
            rows = np.repeat(choice[None], len(feasible), 0)  # [F, I]
            rows[:, i] = feasible
            aps = tables.ap(rows)
            current = aps[np.nonzero(feasible == choice[i])[0][0]] if choice[i] in feasible \
                else -1.0
            if aps.max() > current + 1e-12:
                changed |= bool(feasible[aps.argmax()] != choice[i])
                choice[i] = feasible[aps.argmax()]
        if not changed:
            break
    return choice
