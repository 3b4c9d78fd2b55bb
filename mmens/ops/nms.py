"""Hard NMS, batched, with ensemble-boxes 1.0.9 parity (``nms``).

Also holds the helpers shared with :mod:`mmens.ops.soft_nms`.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import kernel
from .greedy import greedy_cluster
from .layout import argsort_stable, take
from .listapi import run_packed, unpack_images
from .packed import PackedDetections
from .prepare import Prepared, layout_groups, prepare_packed

__all__ = ['nms', 'nms_batch', 'nms_packed']


def nms_scores(prep: Prepared, weighted: bool) -> Tensor:
    """Scores as ensemble-boxes' ``nms_method`` sees them.

    With weights, ``score * w[member] / sum(w)`` (note: the sum, so even
    all-ones weights divide the scores by ``N``); without, the raw scores.

    Returns:
        Tensor[M]: float64 scores.
    """
    if not weighted:
        return prep.scores
    return prep.scores * take(prep.weights, prep.members) / prep.weights.sum()


def finish(prep: Prepared, r: Dict[str, Tensor],
           packed: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Order NMS-family results.

    Args:
        prep (Prepared): the prepared input (for the output dtype).
        r (dict): ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``,
            ``images [K]`` and ``rank [K]`` (order inside its
            ``(image, label)`` group in ensemble-boxes' output); optional
            ``label_order``: ``True`` when already by image, label, rank.
        packed (bool): ``True``: per image by score descending (ties: label,
            then rank); ``False``: ensemble-boxes' order, i.e. per image by
            label ascending, then rank.

    Returns:
        tuple: ``boxes``, ``scores``, ``labels``, ``images``.
    """
    if not packed and r.get('label_order', False):  # the kernel's order
        return (r['boxes'].to(prep.dtype), r['scores'].to(prep.dtype),
                r['labels'], r['images'])
    p = argsort_stable(r['rank'])
    p = take(p, argsort_stable(take(r['labels'], p)))
    if packed:
        p = take(p, argsort_stable(take(r['scores'], p), descending=True))
    p = take(p, argsort_stable(take(r['images'], p)))
    out = [take(r[k], p) for k in ('boxes', 'scores', 'labels', 'images')]
    return (out[0].to(prep.dtype), out[1].to(prep.dtype), out[2], out[3])


def run_nms_batch(packed_fn, images: Sequence[Tuple[Sequence, Sequence,
                                                   Sequence]],
                  report_image: bool, weights, **kwargs) -> List[Tuple]:
    """Run an NMS-family ``*_packed`` op on a batch of member lists.

    Results per image, in ensemble-boxes' order and with its dtypes.
    """
    p, out = run_packed(packed_fn, images, report_image, weights=weights,
                        _packed_order=False, **kwargs)
    dts = (None, np.float64 if weights is not None else None, None)
    return unpack_images(p, *out, np_dtypes=dts, np_empty_dtype=None)


def _hard_nms(prep: Prepared, weighted: bool, iou_thr: float,
              class_agnostic: bool) -> Dict[str, Tensor]:
    scores = nms_scores(prep, weighted)
    if kernel.use_kernel(prep.boxes):
        sel, rank = kernel._ext.nms(prep.boxes.contiguous(),
                                    scores.contiguous(),
                                    prep.labels.contiguous(),
                                    prep.images.contiguous(), prep.valid,
                                    prep.num_images, float(iou_thr),
                                    bool(class_agnostic))
        # the kernel gives the boxes by image, label, then rank
        return dict(boxes=take(prep.boxes, sel), scores=take(scores, sel),
                    labels=take(prep.labels, sel),
                    images=take(prep.images, sel), rank=rank,
                    label_order=not class_agnostic)
    lay, idx, ls = layout_groups(prep, prep.valid, class_agnostic, scores)
    res = greedy_cluster(lay, take(prep.boxes, idx), ls, ls, iou_thr,
                         fused=False)
    pos = torch.arange(idx.shape[0], device=idx.device)  # [K]
    keep = torch.nonzero(take(res.leader, res.slot) == pos)[:, 0]  # leaders
    sel = take(idx, keep)  # [K'] packed index of the kept boxes
    return dict(boxes=take(prep.boxes, sel), scores=take(scores, sel),
                labels=take(prep.labels, sel), images=take(prep.images, sel),
                rank=take(lay.rank, keep))


@torch.no_grad()
def nms_packed(dets: PackedDetections,
               *,
               weights: Optional[Tensor] = None,
               iou_thr: float = 0.5,
               class_agnostic: bool = False,
               image_sizes: Optional[Tensor] = None,
               _packed_order: bool = True,
               _report_image: bool = True) -> Tuple[Tensor, ...]:
    """Hard NMS on packed detections of many images at once.

    Per ``(image, label)``, boxes sorted by score descending (ties: later
    packed box first); a box is kept unless a kept box has IoU ``> iou_thr``
    with it. With ``weights``, scores become ``score * w / sum(w)`` as in
    ensemble-boxes. No ``skip_box_thr`` (ensemble-boxes' ``nms`` has none).

    Args:
        dets, class_agnostic, image_sizes: see
            :func:`~mmens.ops.wbf.weighted_boxes_fusion_packed`.
        weights (Tensor[N], optional): member weights.
        iou_thr (float): suppression threshold (strict ``>``).

    Returns:
        tuple: ``boxes [K, 4]`` (normalised), ``scores [K]``, ``labels [K]``
        (long), ``images [K]``; sorted by image then score descending.
    """
    prep = prepare_packed(dets, weights, image_sizes, _report_image,
                          iou_thr=iou_thr, class_agnostic=class_agnostic)
    r = _hard_nms(prep, weights is not None, iou_thr, class_agnostic)
    return finish(prep, r, _packed_order)


def nms_batch(images: Sequence[Tuple[Sequence, Sequence, Sequence]],
              iou_thr: float = 0.5,
              weights=None,
              _report_image: bool = True) -> List[Tuple]:
    """:func:`nms` for a batch of images in one pass.

    Args:
        images (Sequence[tuple]): ``(boxes_list, scores_list, labels_list)``
            per image.
        iou_thr, weights: see :func:`nms`.

    Returns:
        list[tuple]: ``(boxes, scores, labels)`` per image.
    """
    return run_nms_batch(nms_packed, images, _report_image, weights,
                         iou_thr=iou_thr)


def nms(boxes: Sequence,
        scores: Sequence,
        labels: Sequence,
        iou_thr: float = 0.5,
        weights=None) -> Tuple:
    """Drop-in for ``ensemble_boxes.nms`` (1.0.9).

    Args:
        boxes (Sequence[array[n_i, 4]]): normalised boxes per member.
        scores (Sequence[array[n_i]]): scores per member.
        labels (Sequence[array[n_i]]): labels per member.
        iou_thr (float): suppression threshold (strict ``>``).
        weights (Sequence[float], optional): member weights; scores become
            ``score * w / sum(w)``.

    Returns:
        tuple: ``boxes``, ``scores``, ``labels`` ordered like ensemble-boxes:
        by label ascending, then score descending. NumPy with the dtypes of
        the concatenated input (scores float64 with weights) or torch.

    Differences from ensemble-boxes: the caller's ``scores`` are not
    modified in place (ensemble-boxes overwrites ``scores[i]`` when weights
    are given); empty input returns empty arrays (ensemble-boxes raises
    from ``np.concatenate``); errors and repairs as in
    :func:`~mmens.ops.wbf.weighted_boxes_fusion`.
    """
    return nms_batch([(boxes, scores, labels)],
                     iou_thr,
                     weights,
                     _report_image=False)[0]
