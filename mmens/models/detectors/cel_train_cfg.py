"""``CELDetector``'s ``train_cfg``: its defaults, and a ValueError for a bad setting."""
from typing import Optional

#: Defaults of every ``CELDetector.train_cfg`` key (see its docstring).
CEL_TRAIN_DEFAULTS = dict(iou_thr=0.5, loss_box=1.0, box_loss='l1', iou_tau=0.02,
                          loss_cls='bce', rank_tau=0.05, rank_class_balanced=False,
                          anchor=0.0, selection_grad='jacobian')

_CHOICES = (('selection_grad', ('jacobian', 'perturbed_loss')),
            ('loss_cls', ('bce', 'balanced_bce', 'rank')),
            ('box_loss', ('l1', 'iou_thresholds')))
#: numbers that must be > 0, or >= 0 where ``True``
_NUMBERS = (('anchor', True), ('iou_tau', False), ('rank_tau', False))


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
    return cfg
