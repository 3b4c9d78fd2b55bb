"""``CELDetector``'s ``train_cfg``: its defaults, and a ValueError for a bad setting."""
from typing import Optional

#: Defaults of every ``CELDetector.train_cfg`` key:
#:
#: - ``iou_thr``: IoU of a fused box with its ground truth to be a positive (targets);
#: - ``loss_box``: weight of ``box_loss``: 'l1' (L1 of matched fused boxes, theory.md §4)
#:   or 'iou_thresholds' (the share of COCO's IoU thresholds each matched fused box misses,
#:   smoothed by ``iou_tau``, weighted as the ranking loss's positives);
#: - ``loss_cls``: 'bce', 'balanced_bce' or 'rank' (AP's ranking of matched above
#:   unmatched, per class; ``rank_tau``; ``rank_class_balanced``: False, each positive
#:   weighs the same; True, each class, as COCO's mean over classes);
#: - ``anchor``: weight of ``(ĉ - init_scores)²`` (0: off);
#: - ``selection_grad``: 'jacobian' (the perturbed optimizer's, theory.md §5.3) or
#:   'perturbed_loss' (each image's expected loss, :mod:`mmens.ops.perturbed_loss`);
#: - ``objective``: 'surrogate' (the loss terms above) or 'coco_ap' (COCO AP itself, from
#:   the WBF of each selection on the training images, in AP points times ``loss_ap``;
#:   :mod:`mmens.models.detectors.cel_ap_objective`; needs 'perturbed_loss').
CEL_TRAIN_DEFAULTS = dict(iou_thr=0.5, loss_box=1.0, box_loss='l1', iou_tau=0.02,
                          loss_cls='bce', rank_tau=0.05, rank_class_balanced=False,
                          anchor=0.0, selection_grad='jacobian', objective='surrogate',
                          loss_ap=1.0)

_CHOICES = (('selection_grad', ('jacobian', 'perturbed_loss')),
            ('loss_cls', ('bce', 'balanced_bce', 'rank')),
            ('box_loss', ('l1', 'iou_thresholds')),
            ('objective', ('surrogate', 'coco_ap')))
#: numbers that must be > 0, or >= 0 where ``True``
_NUMBERS = (('anchor', True), ('iou_tau', False), ('rank_tau', False), ('loss_ap', False))


def cel_train_cfg(train_cfg: Optional[dict] = None) -> dict:
    """``train_cfg`` over :data:`CEL_TRAIN_DEFAULTS`, checked before any training: a
    ValueError names the key, its value and what it may be."""
    cfg = dict(CEL_TRAIN_DEFAULTS, **(train_cfg or {}))
    for key, allowed in _CHOICES:
        if cfg[key] not in allowed:
            raise ValueError(f'CELDetector: train_cfg.{key} must be one of {allowed}, '
                             f'got {cfg[key]!r}')
    for key, zero_ok in _NUMBERS:
        value = cfg[key]
        if not (isinstance(value, (int, float)) and (value >= 0 if zero_ok else value > 0)):
            raise ValueError(f'CELDetector: train_cfg.{key} must be a number '
                             f"{'>= 0 (0: off)' if zero_ok else '> 0'}, got {value!r}")
    if cfg['objective'] == 'coco_ap' and cfg['selection_grad'] != 'perturbed_loss':
        raise ValueError("CELDetector: train_cfg.objective='coco_ap' needs "
                         "selection_grad='perturbed_loss' (AP is not differentiable in the "
                         f"selection), got {cfg['selection_grad']!r}")
    return cfg
