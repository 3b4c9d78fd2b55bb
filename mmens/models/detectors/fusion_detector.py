"""Fixed (not learned) fusion of cached member predictions: WBF, NMS, soft-NMS, NMW."""
from typing import Dict, Optional, Sequence, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops import FUSION_METHODS, PackedDetections
from ..live_members import parse_members, register_members, with_member_predictions
from ..utils import split_results


@MODELS.register_module()
class FusionDetector(BaseDetector):
    """An ensemble detector that fuses its members' boxes with a fixed rule.

    The members' predictions come in through :class:`EnsembleDataPreprocessor` as one flat
    batch; fusion runs on the whole batch at once (see :mod:`mmens.ops`) with
    ensemble-boxes semantics.

    Args:
        members (Sequence[str | dict]): member names, in the dataset's order (N = their
            number), or live members ``dict(config=..., checkpoint=...)`` run on the raw
            images (see :class:`mmens.models.LiveMembers`).
        save_members (bool): live members only: keep their weights in the ensemble's
            checkpoints (default: not saved, as mmdet's ``kd_one_stage`` teacher).
        method (str): ``'wbf'``, ``'nms'``, ``'soft_nms'`` or ``'nmw'``.
        fusion_cfg (dict): keyword arguments of the method, as in ensemble-boxes
            (``iou_thr``, ``skip_box_thr``, ``conf_type``, ``weights`` ([N]), ``sigma``, ...).
        test_cfg (dict): ``max_per_img`` (default 100) and ``score_thr`` (default 0).
        data_preprocessor (dict): defaults to ``EnsembleDataPreprocessor``.
    """

    def __init__(self,
                 members: Sequence[Union[str, dict]],
                 method: str = 'wbf',
                 fusion_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 save_members: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or dict(type='EnsembleDataPreprocessor'),
            init_cfg=init_cfg)
        if method not in FUSION_METHODS:
            raise ValueError(f'FusionDetector: unknown method {method!r}; choose one of '
                             f'{sorted(FUSION_METHODS)}')
        names, self.live_members = parse_members(members)
        register_members(self, self.live_members, save_members)
        num_members = len(names)
        fusion_cfg = dict(fusion_cfg or {})
        weights = fusion_cfg.pop('weights', None)
        if weights is not None and len(weights) != num_members:
            raise ValueError(f'FusionDetector: fusion_cfg.weights has {len(weights)} values '
                             f'for {num_members} members')
        self.members = names
        self.num_members = num_members
        self.method = method
        self.fusion_cfg = fusion_cfg
        self.register_buffer(
            'weights', torch.ones(num_members) if weights is None else
            torch.as_tensor(weights, dtype=torch.float32), persistent=False)
        self.test_cfg = dict(dict(max_per_img=100, score_thr=0.0), **(test_cfg or {}))

    def extract_feat(self, batch_inputs: dict) -> dict:
        """The members' predictions are this detector's features."""
        return batch_inputs

    def fuse(self, batch_inputs: dict) -> Sequence[Tensor]:
        """Fuse a packed batch: returns ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]``."""
        fn = FUSION_METHODS[self.method]
        batch_inputs = with_member_predictions(self.live_members, batch_inputs)
        return fn(PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
                  weights=self.weights, **self.fusion_cfg)

    def _forward(self, batch_inputs: dict, batch_data_samples: SampleList = None):
        return self.fuse(batch_inputs)

    def predict(self, batch_inputs: dict, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        boxes, scores, labels, images = self.fuse(batch_inputs)
        results = split_results(boxes, scores, labels, images, batch_inputs['image_sizes'],
                                **self.test_cfg)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def loss(self, batch_inputs: dict, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        raise ValueError(f"FusionDetector('{self.method}') is a fixed rule with nothing to "
                         'train: evaluate it with tools/test.py, or train a learned '
                         'ensemble (configs/learned/)')
