"""The COCO AP that e2e-CEL's warm start ranks the fixed subsets of members by.

It lives in the engine layer, which may import both models and evaluation: a model
(:class:`mmens.models.CELDetector`) only receives the scoring function, through
:class:`CELWarmStartHook`, and never imports the evaluation layer itself.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmens.registry import HOOKS

from mmens.evaluation.coco_eval import CocoEvaluation, results_to_arrays
from mmens.evaluation.samples_coco import coco_from_samples
from mmens.models.detectors.cel_detector import CELDetector


@torch.no_grad()
def fixed_subset_aps(model, batch_inputs: dict, samples: Sequence,
                     subsets: Sequence[Tuple[int, ...]]) -> List[float]:
    """COCO AP (IoU .50:.95) on the batch's images of the WBF of each fixed subset.

    Args:
        model (CELDetector): fuses with its ``fusion_cfg`` and ``test_cfg``.
        batch_inputs (dict): packed member predictions of B images.
        samples (Sequence[DetDataSample]): their ground truth.
        subsets (Sequence[tuple[int]]): member index tuples.

    Returns:
        list[float]: the AP of each subset.
    """
    sizes = batch_inputs['image_sizes']
    num_images = sizes.shape[0]
    labels = [batch_inputs['labels']] + [
        inst.labels for s in samples
        for inst in (s.gt_instances, s.get('ignored_instances', None))
        if inst is not None and 'labels' in inst]
    num_classes = max([int(t.max()) + 1 for t in labels if t.numel()] + [1])
    coco = coco_from_samples(samples, sizes, num_classes)
    img_ids, cat_ids = list(range(1, num_images + 1)), list(range(1, num_classes + 1))
    aps = []
    for s in subsets:
        x = torch.zeros(num_images, model.num_members, device=sizes.device)  # [B, N]
        x[:, list(s)] = 1.0
        per_image = model.predict_by_feat(*model.fuse_selection(batch_inputs, x), sizes)
        dets = results_to_arrays(  # the values fuse_results writes (rounded)
            torch.cat([r.bboxes for r in per_image]), torch.cat([r.scores for r in per_image]),
            torch.cat([r.labels for r in per_image]),
            torch.cat([torch.full((len(r.scores), ), b) for b, r in enumerate(per_image)]),
            img_ids, cat_ids)
        aps.append(CocoEvaluation(coco, dets, img_ids, ap_only=True).ap(np.arange(num_images)))
    return aps


@HOOKS.register_module()
class CELWarmStartHook(Hook):
    """Gives a :class:`CELDetector` the COCO AP (:func:`fixed_subset_aps`) by which its
    warm start picks the best fixed subset of the training images
    (``train_cfg.warm_start``), before training.

    Add it to the ``custom_hooks`` of every e2e-CEL config (configs/cel/); without it,
    a CEL training with ``warm_start=True`` stops with a one-line error.
    """

    priority = 'VERY_HIGH'  # before any hook that might run the model

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        if not isinstance(model, CELDetector):
            raise TypeError(f'CELWarmStartHook: the model is a {type(model).__name__}, not '
                            'a CELDetector; remove the hook from custom_hooks')
        model.subset_evaluator = fixed_subset_aps
