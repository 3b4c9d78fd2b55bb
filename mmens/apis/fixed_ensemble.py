"""A fixed fusion rule (WBF, NMS, soft-NMS, NMW) applied to packed member batches.

:class:`FixedEnsemble` is the ``fuse`` of :class:`mmens.models.FusionDetector` without
mmdet's detector around it (data preprocessor, ``predict``, data samples), which a file of
cached predictions does not need: ``fuse_results.py --method wbf`` and the APIs below run
with torch alone, without importing mmdet, mmcv or mmengine (their import is most of the
tool's start-up).
"""
import inspect
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmens.ops import FUSION_METHODS, PackedDetections


class FixedEnsemble(nn.Module):
    """Fuse the members' boxes of a packed batch with a fixed rule.

    Args:
        members (Sequence[str]): member names, in the member-index order of the batches.
        method (str): ``'wbf'``, ``'nms'``, ``'soft_nms'`` or ``'nmw'``.
        weights (Sequence[float], optional): ``[N]`` member weights (default all 1).
        **fusion_cfg: keyword arguments of the method, as in ensemble-boxes (``iou_thr``,
            ``skip_box_thr``, ``conf_type``, ``sigma``, ``thresh``, ...), checked by the
            op itself.
    """

    def __init__(self, members: Sequence[str], method: str = 'wbf',
                 weights: Optional[Sequence[float]] = None, **fusion_cfg) -> None:
        super().__init__()
        if method not in FUSION_METHODS:
            raise ValueError(f'unknown fusion method {method!r}; choose one of '
                             f'{sorted(FUSION_METHODS)}')
        self.members = list(members)
        if weights is not None and len(weights) != len(self.members):
            raise ValueError(f'weights has {len(weights)} values for {len(self.members)} '
                             'members')
        signature = inspect.signature(FUSION_METHODS[method]).parameters.items()
        params = [name for name, p in signature
                  if p.kind == p.KEYWORD_ONLY and name != 'weights' and name[0] != '_']
        unknown = sorted(set(fusion_cfg) - set(params))
        if unknown:
            raise ValueError(f'fusion method {method!r} takes no {", ".join(unknown)} (its '
                             f'parameters: {", ".join(params)})')
        self.method = method
        self.fusion_cfg = fusion_cfg
        self.register_buffer(
            'weights', torch.ones(len(self.members)) if weights is None else
            torch.as_tensor(weights, dtype=torch.float32), persistent=False)
        # the op checks its parameters (one validation for every caller): on an empty batch,
        # a bad value is refused now, before any member file is read
        self.fuse(dict(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                       labels=torch.zeros(0, dtype=torch.long),
                       members=torch.zeros(0, dtype=torch.long),
                       images=torch.zeros(0, dtype=torch.long), image_sizes=torch.ones(1, 2)))

    def fuse(self, batch_inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch (``bboxes [M, 4]`` pixels, ``scores``, ``labels``,
        ``members``, ``images`` ``[M]``, ``image_sizes [B, 2]``): returns ``boxes [K, 4]``
        (normalised), ``scores [K]``, ``labels [K]``, ``images [K]``."""
        return FUSION_METHODS[self.method](
            PackedDetections.from_batch_inputs(batch_inputs, len(self.members)),
            weights=self.weights, **self.fusion_cfg)

    def fuse_with_metainfo(self, batch_inputs: Dict[str, Tensor]
                           ) -> Tuple[Tuple[Tensor, Tensor, Tensor, Tensor], Dict[str, Tensor]]:
        """:meth:`fuse`, and no per-image decision (a fixed rule selects nothing)."""
        return self.fuse(batch_inputs), {}


def build_fixed_ensemble(members: Sequence[str], method: str, **fusion_cfg) -> FixedEnsemble:
    """A :class:`FixedEnsemble` for ``method`` (``wbf``, ``nms``, ``soft_nms``, ``nmw``);
    ``None`` values of ``fusion_cfg`` (e.g. ``weights``) take the method's defaults."""
    fusion_cfg = {k: v for k, v in fusion_cfg.items() if v is not None}
    return FixedEnsemble(members, method, **fusion_cfg).eval()
