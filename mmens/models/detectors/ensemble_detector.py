"""Learned ensemble of cached member predictions: matching → learned fusion head."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops.clustering import match_boxes
from mmens.ops.packed import PackedDetections
from mmens.ops.targets import assign_targets
from ..live_members import parse_members, register_members, with_member_predictions
from ..utils import split_results


def pack_gt(samples: SampleList, image_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ground truth of a batch, flat and normalised.

    Returns:
        boxes ``[G, 4]`` (normalised xyxy), labels ``[G]``, image index ``[G]``,
        ignore ``[G]`` bool (COCO crowd boxes, from ``ignored_instances``).
    """
    device = image_sizes.device
    boxes, labels, images, ignore = [], [], [], []
    for b, s in enumerate(samples):
        for inst, flag in ((s.gt_instances, False), (s.get('ignored_instances', None), True)):
            if inst is None or 'bboxes' not in inst:
                continue
            t = inst.bboxes.tensor if hasattr(inst.bboxes, 'tensor') else inst.bboxes
            t = t.to(device).float().reshape(-1, 4)  # [G_b, 4]
            boxes.append(t / image_sizes[b].repeat(2))
            labels.append(inst.labels.to(device).long().reshape(-1))
            images.append(torch.full((len(t),), b, device=device, dtype=torch.long))
            ignore.append(torch.full((len(t),), flag, device=device, dtype=torch.bool))
    if not boxes:
        z = torch.zeros(0, device=device)
        return z.reshape(0, 4), z.long(), z.long(), z.bool()
    return torch.cat(boxes), torch.cat(labels), torch.cat(images), torch.cat(ignore)


@MODELS.register_module()
class EnsembleDetector(BaseDetector):
    """Matching of the members' boxes into clusters Ŷ, then a learned fusion head.

    The members are frozen (their predictions are cached, or see the live variant): only
    the head learns. The matching is the WBF clustering of :func:`mmens.ops.match_boxes`,
    with the head's learned member weights.

    Args:
        members (Sequence[str | dict]): member names in the dataset's order (N = their
            number), or live members ``dict(config=..., checkpoint=...)`` run on the raw
            images (see :class:`mmens.models.LiveMembers`).
        save_members (bool): live members only: keep their weights in the ensemble's
            checkpoints (default: not saved, as mmdet's ``kd_one_stage`` teacher).
        head (dict): head config (e.g. ``LearnedFusionHead``); ``num_members`` is filled in.
        matching (dict): ``match_boxes`` options (``iou_thr``, ``skip_box_thr``,
            ``conf_type``, ``member_reduce``, ``class_agnostic``).
        train_cfg (dict): ``iou_thr`` of the target assignment (default 0.5).
        test_cfg (dict): ``max_per_img`` (default 100), ``score_thr`` (default 0).
    """

    def __init__(self,
                 members: Sequence[Union[str, dict]],
                 head: dict,
                 matching: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 save_members: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or dict(type='EnsembleDataPreprocessor'),
            init_cfg=init_cfg)
        self.members, self.live_members = parse_members(members)
        register_members(self, self.live_members, save_members)
        self.num_members = len(self.members)
        self.head = MODELS.build(dict(head, num_members=self.num_members))
        self.matching = dict(dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
                             **(matching or {}))
        self.train_cfg = dict(dict(iou_thr=0.5), **(train_cfg or {}))
        self.test_cfg = dict(dict(max_per_img=100, score_thr=0.0), **(test_cfg or {}))

    def extract_feat(self, batch_inputs: dict):
        """Match the members' boxes of a packed batch into clusters (no gradient)."""
        batch_inputs = with_member_predictions(self.live_members, batch_inputs)
        with torch.no_grad():
            return match_boxes(PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
                               weights=self.head.matching_weights(), **self.matching)

    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch: ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]`` (same contract as ``FusionDetector.fuse``)."""
        clusters = self.extract_feat(batch_inputs)
        boxes, scores = self.head.predict_by_feat(clusters)
        return boxes, scores, clusters.labels, clusters.image_index

    def _forward(self, batch_inputs: dict, batch_data_samples: SampleList = None):
        return self.fuse(batch_inputs)

    def loss(self, batch_inputs: dict, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        return self.head.loss_by_feat(*self.loss_inputs(batch_inputs, batch_data_samples))

    @torch.no_grad()
    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        """The clusters of a batch and their targets: what ``head.loss_by_feat`` takes."""
        clusters = self.extract_feat(batch_inputs)
        gt_boxes, gt_labels, gt_images, gt_ignore = pack_gt(batch_data_samples,
                                                            batch_inputs['image_sizes'])
        targets = assign_targets(clusters.fused_boxes, clusters.fused_scores,
                                 clusters.labels, clusters.image_index, gt_boxes, gt_labels,
                                 gt_images, iou_thr=self.train_cfg['iou_thr'],
                                 gt_ignore=gt_ignore)
        return clusters, targets

    def predict(self, batch_inputs: dict, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        boxes, scores, labels, images = self.fuse(batch_inputs)
        results = split_results(boxes, scores, labels, images, batch_inputs['image_sizes'],
                                **self.test_cfg)
        return self.add_pred_to_datasample(batch_data_samples, results)
