"""WBF's ``iou_thr``, ``skip_box_thr`` and ``conf_type`` chosen by inner cross-validation.

ensemble-boxes users tune these three in nested loops; a learned ensemble chooses them on
its training images instead. The images are split into ``num_folds`` inner folds; for
every ``iou_thr`` and inner fold, the head is fitted on the other folds' clusters (as the
Runner fits it: equal matching weights, every box) and fuses the held-out
fold with each ``(skip_box_thr, conf_type)``. The held-out outputs of all inner folds are
pooled and scored at once by COCO AP: what an evaluator returns, e.g. the fast COCO AP
that :class:`mmens.engine.FusionSearchHook` gives the model (models never import the
evaluation layer). ``skip_box_thr`` and ``conf_type`` do not change the fit, so each
``iou_thr`` costs ``num_folds`` fits, one matching of all images and one of each held-out
fold per ``skip_box_thr``.
"""
import copy
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from mmens.ops.packed import select_images
from ..utils import cluster_targets

#: ``(model, candidates, image_sizes, samples, num_bootstrap=0) -> [AP of each candidate]``:
#: each candidate is a fused ``(boxes [K, 4] normalised, scores [K], labels [K], images
#: [K])`` of all the images of ``image_sizes [B, 2]``, scored against the samples' ground
#: truth; with ``num_bootstrap`` an AP is ``[1 + num_bootstrap]``: the AP, then its AP on
#: bootstrap resamples of the images (the same resamples for every candidate)
FusionEvaluator = Callable[..., List[float]]

#: the keys of a packed batch that are per box (what select_images splits)
PACKED_KEYS = ('bboxes', 'scores', 'labels', 'members', 'images', 'image_sizes')


class FusionSearch(NamedTuple):
    """A threshold search to run before training (set on the model by the hook).

    Attributes:
        evaluator (FusionEvaluator): COCO AP of fused candidates.
        iou_thrs, skip_box_thrs (Sequence[float]), conf_types (Sequence[str]): the grid,
            to which the model's current values (its config's ``matching``) are added
            first: the first candidate, kept unless another is clearly better (ties go to
            the first in grid order).
        num_folds (int): inner folds (at most the number of images).
        seed (int): seed of the inner split.
        num_bootstrap (int): paired bootstrap resamples of the images (0: the plain
            maximum).
        confidence (float): the best candidate replaces the first (the config's values)
            only if it beats it in at least this share of the resamples: the AP surface is
            flat on small training sets, where the plain maximum of many candidates chases
            noise (docs/experiments.md).
    """
    evaluator: FusionEvaluator
    iou_thrs: Sequence[float]
    skip_box_thrs: Sequence[float]
    conf_types: Sequence[str]
    num_folds: int = 4
    seed: int = 0
    num_bootstrap: int = 100
    confidence: float = 0.9


def inner_folds(num_images: int, num_folds: int, seed: int) -> List[Tensor]:
    """The held-out positions of each inner fold (a seeded permutation dealt round-robin;
    sorted); ``min(num_folds, num_images)`` folds, none empty."""
    k = max(1, min(num_folds, num_images))
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return [perm[f::k].sort().values for f in range(k)]


def take_clusters(clusters, targets, keep: Tensor) -> tuple:
    """The clusters ``keep [C']`` and their targets, for a fit (``box_cluster`` emptied:
    it indexes boxes, and fits do not read it)."""
    sub = clusters._replace(**{f: getattr(clusters, f)[keep] for f in clusters._fields
                               if f != 'box_cluster'})
    sub = sub._replace(box_cluster=clusters.box_cluster[:0])
    return sub, targets._replace(**{f: getattr(targets, f)[keep] for f in targets._fields})


def conf_type_scores(clusters, scores: Tensor, members: Tensor, weights: Tensor,
                     conf_types: Sequence[str]) -> List[Tensor]:
    """WBF's fused score of each cluster under each of ``conf_types``, from one matching.

    ``conf_type`` changes neither the clusters nor the fused boxes, only the rescaling of
    the score (ensemble-boxes 1.0.9, as :func:`mmens.ops.clustering.match_boxes`), so one
    matching serves every ``conf_type`` (up to float32 rounding: the search only ranks).

    Args:
        clusters (Clusters): ``C`` clusters of the boxes, ``box_cluster [M]``.
        scores (Tensor[M]): the scores that were matched; members (Tensor[M]).
        weights (Tensor[N]): the matching weights.
        conf_types (Sequence[str]): see :data:`mmens.ops.CONF_TYPES`.

    Returns:
        list[Tensor[C]]: float64 scores, one per conf_type.
    """
    c, n = clusters.counts.shape
    w = weights.double()  # [N]
    kept = clusters.box_cluster >= 0  # [M]
    cl = clusters.box_cluster[kept]  # [K]
    bw = w[members[kept]]  # [K]
    ws = scores[kept].double() * bw  # [K]
    conf = ws.new_zeros(c).index_add_(0, cl, ws)  # [C]
    wsum = ws.new_zeros(c).index_add_(0, cl, bw)  # [C]
    smax = ws.new_zeros(c).scatter_reduce_(0, cl, ws, 'amax')  # [C]
    cnt = clusters.counts.sum(1).double()  # [C]
    present = clusters.mask.double()  # [C, N]
    out = []
    for conf_type in conf_types:
        if conf_type == 'avg':
            out.append(conf / cnt * cnt.clamp(max=n) / w.sum())
        elif conf_type == 'max':
            out.append(smax / w.max())
        elif conf_type == 'box_and_model_avg':
            out.append(conf / wsum * (present @ w) / w.sum())
        else:  # absent_model_aware_avg
            out.append(conf / (wsum + (1 - present) @ w))
    return out


@torch.no_grad()
def search_fusion(model, batch_inputs: dict, samples: Sequence, search: FusionSearch
                  ) -> Tuple[Dict[str, object], List[Tuple[tuple, float]]]:
    """Choose ``iou_thr``, ``skip_box_thr`` and ``conf_type`` of ``model`` (an
    :class:`EnsembleDetector` whose head has ``fit_clusters``) on a batch by inner CV.

    The training clusters of an image do not depend on the other images, so they and
    their targets are computed once per ``iou_thr`` for all images and each inner fit
    takes its part; each held-out fold is matched once per ``skip_box_thr``
    (:func:`conf_type_scores` gives every ``conf_type``).

    Returns:
        tuple: the chosen ``dict(iou_thr, skip_box_thr, conf_type)`` (the best AP, or the
        first candidate when the best is not better in ``search.confidence`` of the
        bootstrap resamples) and every candidate ``((iou_thr, skip_box_thr, conf_type),
        AP)`` in grid order.
    """
    packed = {k: batch_inputs[k] for k in PACKED_KEYS}
    sizes = packed['image_sizes']
    dev = sizes.device
    folds = [f.to(dev) for f in inner_folds(sizes.shape[0], search.num_folds, search.seed)]
    current = model.fusion_cfg()  # the config's values: the first candidate
    search = search._replace(**{
        key: tuple(dict.fromkeys([current[name], *getattr(search, key)]))
        for key, name in (('iou_thrs', 'iou_thr'), ('skip_box_thrs', 'skip_box_thr'),
                          ('conf_types', 'conf_type'))})
    cands = [(i, s, c) for i in search.iou_thrs for s in search.skip_box_thrs
             for c in search.conf_types]
    pooled: Dict[tuple, List[tuple]] = {c: [] for c in cands}
    for iou_thr in search.iou_thrs:
        head = copy.deepcopy(model.head).train()  # equal weights, every box
        clusters = model.match(packed, head, iou_thr=iou_thr, skip_box_thr=0.0,
                               conf_type='avg')
        targets = cluster_targets(clusters, samples, sizes, model.train_cfg['iou_thr'])
        for held in folds:
            head = copy.deepcopy(model.head).train()
            train = ~torch.isin(clusters.image_index, held)  # [C]
            if bool(train.any()):  # else nothing to fit on: the head's start is used
                head.fit_clusters(*take_clusters(clusters, targets, train))
            head.eval()
            part = select_images(packed, held)
            for skip in search.skip_box_thrs:
                cl = model.match(part, head, iou_thr=iou_thr, skip_box_thr=skip,
                                 conf_type='avg')
                boxes, _ = head.predict_by_feat(cl)
                per_conf = conf_type_scores(cl, part['scores'], part['members'],
                                            head.matching_weights(), search.conf_types)
                for conf, fused in zip(search.conf_types, per_conf):
                    pooled[(iou_thr, skip, conf)].append(
                        (boxes, fused.to(boxes.dtype), cl.labels, held[cl.image_index]))
    fused = [tuple(torch.cat(col) for col in zip(*pooled[c])) for c in cands]
    aps = [float(np.atleast_1d(a)[0]) for a in search.evaluator(model, fused, sizes,
                                                                  samples)]
    best = int(np.argmax(aps))  # the first maximum
    if best and search.num_bootstrap:  # resampled: the config's values and the best only
        ref, top = (np.asarray(a, dtype=np.float64)[1:] for a in search.evaluator(
            model, [fused[0], fused[best]], sizes, samples,
            num_bootstrap=search.num_bootstrap))
        if (top > ref).mean() < search.confidence:
            best = 0  # not clearly better than the config's values
    return (dict(iou_thr=cands[best][0], skip_box_thr=cands[best][1],
                 conf_type=cands[best][2]), list(zip(cands, aps)))
