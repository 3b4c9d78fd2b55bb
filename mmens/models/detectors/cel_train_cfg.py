"""``CELDetector``'s ``train_cfg``: its defaults, and a ValueError for a bad setting."""
from typing import Optional

#: Defaults of every ``CELDetector.train_cfg`` key, the recommended settings (each chosen
#: out of fold on the embedded val split; the rejected ones are in docs/experiments.md):
#:
#: - ``iou_thr``: IoU of a fused box with its ground truth to be a positive (targets);
#: - ``loss_cls``: 'rank' (AP's ranking of matched above unmatched fused boxes, per class,
#:   each class weighing the same as in COCO's mean over classes; ``rank_tau`` smooths it)
#:   or 'bce' (docs/theory.md §4's J_cls on the fused score);
#: - ``loss_box``: weight of the L1 term of matched fused boxes (docs/theory.md §4, J_reg);
#: - ``anchor``: weight of ``(ĉ - init_scores)²``, which keeps ĉ near its warm start
#:   unless the loss pays for leaving it (0: off);
#: - ``selection_grad``: 'perturbed_loss' (each image's expected loss over perturbed
#:   selections, :mod:`mmens.ops.perturbed_loss`) or 'jacobian' (the perturbed
#:   optimizer's Jacobian, docs/theory.md §5.3, as in the e2e-CEL paper);
#: - ``warm_start``: before the first step, start ĉ at the best fixed subset of the
#:   training images by COCO AP, ``±warm_start_gap / 2`` (:mod:`.cel_warm_start`);
#:   False keeps the selection net's ``init_scores``.
CEL_TRAIN_DEFAULTS = dict(iou_thr=0.5, loss_cls='rank', rank_tau=0.05, loss_box=1.0,
                          anchor=0.1, selection_grad='perturbed_loss', warm_start=True,
                          warm_start_gap=0.25)

_CHOICES = (('selection_grad', ('perturbed_loss', 'jacobian')),
            ('loss_cls', ('rank', 'bce')),
            ('warm_start', (True, False)))
#: numbers that must be > 0, or >= 0 where ``True``
_NUMBERS = (('anchor', True), ('rank_tau', False), ('loss_box', True),
            ('warm_start_gap', False), ('iou_thr', False))


def cel_train_cfg(train_cfg: Optional[dict] = None) -> dict:
    """``train_cfg`` over :data:`CEL_TRAIN_DEFAULTS`, checked before any training: a
    ValueError names the key, its value and what it may be (an unknown key too)."""
    unknown = sorted(set(train_cfg or {}) - set(CEL_TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f'CELDetector: unknown train_cfg key(s) {unknown}; the keys are '
                         f'{sorted(CEL_TRAIN_DEFAULTS)}')
    cfg = dict(CEL_TRAIN_DEFAULTS, **(train_cfg or {}))
    for key, allowed in _CHOICES:
        if cfg[key] not in allowed:
            raise ValueError(f'CELDetector: train_cfg.{key} must be one of {allowed}, '
                             f'got {cfg[key]!r}')
    for key, zero_ok in _NUMBERS:
        value = cfg[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (value >= 0 if zero_ok else value > 0)):
            raise ValueError(f'CELDetector: train_cfg.{key} must be a number '
                             f"{'>= 0 (0: off)' if zero_ok else '> 0'}, got {value!r}")
    return cfg
