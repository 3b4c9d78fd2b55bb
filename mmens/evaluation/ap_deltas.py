"""How COCO AP changes when one image switches to another fused output, for every image.

e2e-CEL picks, per image, which members' fused output that image gets. COCO AP is not a sum
over images, but a change of one image's detections changes AP in a computable way: remove
that image's detections of each category it touches from the pooled, score-sorted list and
put the other output's in. :func:`ap_switch_deltas` does that for every image and every
candidate output, against one reference choice per image, with pycocotools' own per-image
matching (:class:`CocoEvaluation`, run once per output) and its ``accumulate`` arithmetic
(:func:`category_ap`). The result is exact for one image switched at a time; for several
at once it is the first-order (additive) estimate.
"""
from typing import Optional, Sequence

import numpy as np

from .coco_eval import CocoEvaluation, category_ap


def _image_slice(f: Optional[dict], i: int) -> slice:
    if f is None:
        return slice(0, 0)
    return slice(int(f['start'][i]), int(f['start'][i] + f['count'][i]))


def ap_switch_deltas(evals: Sequence[CocoEvaluation], reference: np.ndarray,
                     positions: Optional[np.ndarray] = None) -> np.ndarray:
    """``[S, P]``: COCO AP (IoU .50:.95, all areas, 100 dets) over ``positions`` with image
    ``positions[p]`` alone taking output s, minus AP with every image at its reference.

    Args:
        evals (Sequence[CocoEvaluation]): S evaluations of S fused outputs (e.g. the WBF of
            each member subset), all of the same ground truth and ``img_ids``.
        reference (np.ndarray): ``[P]`` int, the output each image takes in the reference
            (an index into ``evals``).
        positions (np.ndarray, optional): ``[P]`` distinct image positions in ``img_ids``
            over which AP is taken (default: all, in order).

    Returns:
        np.ndarray: ``[S, P]`` float64 (0 where s is the reference, or where neither output
        has a detection and the image has no ground truth in any category touched).
    """
    if not evals:
        raise ValueError('ap_switch_deltas: no evaluation given')
    img_ids = evals[0].img_ids
    if any(e.img_ids != img_ids for e in evals):
        raise ValueError('ap_switch_deltas: every evaluation must cover the same img_ids')
    positions = np.arange(len(img_ids)) if positions is None else np.asarray(positions)
    reference = np.asarray(reference, dtype=np.int64)
    if reference.shape != positions.shape:
        raise ValueError(f'ap_switch_deltas: reference has shape {reference.shape} for '
                         f'{positions.shape} positions')
    if len(np.unique(positions)) != len(positions):
        raise ValueError('ap_switch_deltas: positions must be distinct')
    if reference.size and not 0 <= reference.min() <= reference.max() < len(evals):
        raise ValueError(f'ap_switch_deltas: reference indices must be in 0..{len(evals) - 1}')
    out = np.zeros((len(evals), len(positions)))
    live = [e for e in evals if not e.empty]
    if not live or not len(positions):
        return out
    for e in live:
        if not hasattr(e, '_fast'):
            e._prepare_fast()
    params = live[0]._params
    num_cats = 0
    for k in range(len(params.catIds)):
        f0 = next((e._fast[k] for e in live if e._fast[k] is not None), None)
        if f0 is None:
            continue
        npig_img = f0['npig'][positions]  # ground truth only: the same in every output
        npig = int(npig_img.sum())
        if npig == 0:
            continue
        num_cats += 1
        fasts = [None if e.empty else e._fast[k] for e in evals]
        slices = [[_image_slice(f, i) for i in positions] for f in fasts]  # [S][P]
        parts = [(fasts[r], slices[r][p]) for p, r in enumerate(reference)]

        def pooled(at: int = -1, replacement=None):
            # image order kept, so that tied scores sort as in pycocotools
            chunks = [replacement if p == at else c for p, c in enumerate(parts)]
            chunks = [(f, sl) for f, sl in chunks if sl.stop > sl.start]
            if not chunks:
                return None
            return (np.concatenate([f['scores'][sl] for f, sl in chunks]),
                    np.concatenate([f['tp'][:, sl] for f, sl in chunks], 1),
                    np.concatenate([f['fp'][:, sl] for f, sl in chunks], 1))

        def ap_of(pool) -> float:
            if pool is None:
                return 0.0
            return float(category_ap(*pool, npig, params.recThrs).mean())

        ref_ap = ap_of(pooled())
        for p in range(len(positions)):
            touched = [s for s in range(len(evals)) if slices[s][p].stop > slices[s][p].start]
            if not touched and npig_img[p] == 0:
                continue  # no detection of this category under any output, no ground truth
            for s in range(len(evals)):
                if s == reference[p] or (slices[s][p].stop == slices[s][p].start and
                                         parts[p][1].stop == parts[p][1].start):
                    continue  # the same detections (none) either way
                out[s, p] += ap_of(pooled(p, (fasts[s], slices[s][p]))) - ref_ap
    return out / max(num_cats, 1)
