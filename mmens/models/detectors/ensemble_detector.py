"""Learned ensemble of cached member predictions: matching → learned fusion head."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmens.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops.clustering import match_boxes
from mmens.ops.packed import PackedDetections
from ..utils import cluster_targets
from .base_ensemble import BaseEnsembleDetector


@MODELS.register_module()
class EnsembleDetector(BaseEnsembleDetector):
    """Matching of the members' boxes into clusters Ŷ, then a learned fusion head.

    The members are frozen (their predictions are cached, or see the live variant): only
    the head learns. The matching is the WBF clustering of :func:`mmens.ops.match_boxes`,
    with the head's learned member weights.

    Args:
        members (Sequence[str | dict]): member names or live members (see
            :class:`BaseEnsembleDetector`, with ``save_members``, ``test_cfg``,
            ``data_preprocessor``).
        head (dict): head config (e.g. ``LearnedFusionHead``); ``num_members`` is filled in.
        matching (dict): ``match_boxes`` options (``iou_thr``, ``skip_box_thr``,
            ``conf_type``, ``member_reduce``, ``class_agnostic``).
        train_cfg (dict): ``iou_thr`` of the target assignment (default 0.5).
    """

    def __init__(self, members: Sequence[Union[str, dict]], head: dict,
                 matching: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 save_members: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(members, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         save_members=save_members, init_cfg=init_cfg)
        self.head = MODELS.build(dict(head, num_members=self.num_members))
        self.matching = dict(dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
                             **(matching or {}))
        self.train_cfg = dict(dict(iou_thr=0.5), **(train_cfg or {}))

    def extract_feat(self, batch_inputs: dict):
        """Match the members' boxes of a packed batch into clusters (no gradient)."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        with torch.no_grad():
            return match_boxes(PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
                               weights=self.head.matching_weights(), **self.matching)

    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch: ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]`` (the head's ``predict_by_feat`` of the clusters)."""
        clusters = self.extract_feat(batch_inputs)
        boxes, scores = self.head.predict_by_feat(clusters)
        return boxes, scores, clusters.labels, clusters.image_index

    @torch.no_grad()
    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        """The clusters of a batch and their targets: what ``head.loss_by_feat`` takes."""
        clusters = self.extract_feat(batch_inputs)
        return clusters, cluster_targets(clusters, batch_data_samples,
                                         batch_inputs['image_sizes'], self.train_cfg['iou_thr'])

    def loss_by_feat(self, clusters, targets) -> Dict[str, Tensor]:
        """The head's losses (only the head learns)."""
        return self.head.loss_by_feat(clusters, targets)
