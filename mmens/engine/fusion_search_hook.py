"""The COCO AP by which a learned ensemble chooses its fusion thresholds.

It lives in the engine layer, which may import both models and evaluation: the model
(:class:`mmens.models.EnsembleDetector`) only receives the scoring function, through
:class:`FusionSearchHook`, and never imports the evaluation layer itself.
"""
import functools
from typing import List, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from mmens.registry import HOOKS
from torch import Tensor

from mmens.evaluation.coco_eval import CocoEvaluation, results_to_arrays
from mmens.evaluation.samples_coco import coco_from_samples
from mmens.models.detectors.ensemble_detector import EnsembleDetector
from mmens.models.detectors.fusion_search import FusionSearch
from mmens.ops.clustering import CONF_TYPES
from mmens.ops.results import rank_results


@torch.no_grad()
def fused_aps(model, candidates: Sequence[tuple], image_sizes: Tensor,
              samples: Sequence, num_bootstrap: int = 0, seed: int = 0) -> List[np.ndarray]:
    """COCO AP (IoU .50:.95, fast COCO AP) of each fused candidate of the batch's images,
    ``[1 + num_bootstrap]``: the AP, then the APs of bootstrap resamples of the images
    (``RandomState(seed)``: the same resamples for every candidate, so they pair).

    Args:
        model (EnsembleDetector): its ``test_cfg`` ranks and cuts the detections as at
            test time.
        candidates (Sequence[tuple]): fused ``(boxes [K, 4] normalised, scores [K],
            labels [K], images [K])`` of all ``B`` images.
        image_sizes (Tensor): ``[B, 2]``.
        samples (Sequence[DetDataSample]): their ground truth.
    """
    num_images = image_sizes.shape[0]
    labels = [c[2] for c in candidates] + [
        inst.labels for s in samples
        for inst in (s.gt_instances, s.get('ignored_instances', None))
        if inst is not None and 'labels' in inst]
    num_classes = max([int(t.max()) + 1 for t in labels if t.numel()] + [1])
    coco = coco_from_samples(samples, image_sizes, num_classes)
    img_ids, cat_ids = list(range(1, num_images + 1)), list(range(1, num_classes + 1))
    aps = []
    for fused in candidates:
        ranked = rank_results(*fused, image_sizes, max_per_img=model.test_cfg['max_per_img'],
                              score_thr=model.test_cfg['score_thr'])
        dets = results_to_arrays(*ranked, img_ids, cat_ids)  # as fuse_results writes them
        ev = CocoEvaluation(coco, dets, img_ids, ap_only=True)
        boot = ev.bootstrap_aps(num_bootstrap, seed) if num_bootstrap else np.zeros(0)
        aps.append(np.concatenate([[ev.ap(np.arange(num_images))], boot]))
    return aps


@HOOKS.register_module()
class FusionSearchHook(Hook):
    """Has an :class:`EnsembleDetector` choose WBF's ``iou_thr``, ``skip_box_thr`` and
    ``conf_type`` by inner cross-validation on its training images, scored by the fast
    COCO AP (:func:`fused_aps`), before the first step (see
    :mod:`mmens.models.detectors.fusion_search`). The defaults are the recommended grid
    (docs/experiments.md); ties go to the first value of each list.

    Args:
        iou_thrs (Sequence[float]): WBF IoU thresholds to try.
        skip_box_thrs (Sequence[float]): raw-score thresholds to try.
        conf_types (Sequence[str]): WBF confidence types to try.
        num_folds (int): inner folds.
        seed (int): seed of the inner split and of the bootstrap resamples.
        num_bootstrap (int): paired bootstrap resamples of the training images.
        confidence (float): the best candidate replaces the first values of the lists
            only if it beats them in at least this share of the resamples (see
            :class:`~mmens.models.detectors.fusion_search.FusionSearch`).
    """

    priority = 'VERY_HIGH'  # before any hook that might run the model

    def __init__(self, iou_thrs: Sequence[float] = (0.55, 0.45, 0.65, 0.75),
                 skip_box_thrs: Sequence[float] = (0.0, 0.02),
                 conf_types: Sequence[str] = CONF_TYPES, num_folds: int = 4,
                 seed: int = 0, num_bootstrap: int = 100, confidence: float = 0.9) -> None:
        for name, values in (('iou_thrs', iou_thrs), ('skip_box_thrs', skip_box_thrs)):
            if not values or any(not 0 <= float(v) < 1 for v in values):
                raise ValueError(f'FusionSearchHook: {name} must be a non-empty list of '
                                 f'values in [0, 1), got {values!r}')
        bad = [c for c in conf_types if c not in CONF_TYPES]
        if not conf_types or bad:
            raise ValueError(f'FusionSearchHook: conf_types must be a non-empty list of '
                             f'{CONF_TYPES}, got {conf_types!r}')
        if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
            raise ValueError(f'FusionSearchHook: num_folds must be an integer >= 2, got '
                             f'{num_folds!r}')
        if not 0 <= confidence <= 1:
            raise ValueError(f'FusionSearchHook: confidence must be in [0, 1], got '
                             f'{confidence!r}')
        self.search = FusionSearch(functools.partial(fused_aps, seed=int(seed)),
                                   tuple(float(v) for v in iou_thrs),
                                   tuple(float(v) for v in skip_box_thrs), tuple(conf_types),
                                   num_folds, int(seed), int(num_bootstrap), float(confidence))

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        if not isinstance(model, EnsembleDetector) or not hasattr(model.head,
                                                                  'fit_clusters'):
            raise TypeError(f'FusionSearchHook: the model is a {type(model).__name__} '
                            'without a LearnedWeightsHead; remove the hook from '
                            'custom_hooks')
        model.fusion_search = self.search
