"""WBF of instance-segmentation members: fused boxes, and a fused mask per box."""
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmdet.structures import SampleList
from mmengine.structures import InstanceData

from mmens.models.mask_fusion import fuse_packed_masks
from mmens.ops.masks import MaskRuns
from mmens.registry import MODELS
from .fusion_detector import FusionDetector


@MODELS.register_module()
class MaskFusionDetector(FusionDetector):
    """WBF of the members' boxes, and each fused box's mask: the weighted mean of its
    cluster's member masks over the cluster's region, ``>= mask_thr``
    (:func:`mmens.ops.masks.fuse_cluster_masks`; the weight of a mask is its box's WBF
    weight, score times member weight, or 1 with ``vote``).

    The masks come from ``CocoEnsembleDataset(with_masks=True)`` (cached members whose
    files carry ``segmentation``; ``PackEnsembleInputs`` must keep the ``member_masks``
    meta key) or from live mmdet instance-segmentation members. ``pred_instances.masks``
    holds COCO RLE dicts, which mmdet's ``CocoMetric(metric=['bbox', 'segm'])`` scores as
    they are.

    Args:
        members, fusion_cfg, test_cfg, data_preprocessor, save_members, init_cfg: as
            :class:`FusionDetector` with ``method='wbf'``.
        mask_thr (float): in ``(0, 1]`` (default 0.5, mmdet's binarisation threshold).
        vote (bool): every member mask weighs 1.
    """

    fuses_masks = True

    def __init__(self, members: Sequence[Union[str, dict]], fusion_cfg: Optional[dict] = None,
                 mask_thr: float = 0.5, vote: bool = False, test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, save_members: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        if not 0 < mask_thr <= 1:
            raise ValueError(f'MaskFusionDetector: mask_thr must be in (0, 1], got {mask_thr}')
        super().__init__(members, method='wbf', fusion_cfg=fusion_cfg, test_cfg=test_cfg,
                         data_preprocessor=data_preprocessor, save_members=save_members,
                         init_cfg=init_cfg)
        self.mask_thr, self.vote = float(mask_thr), bool(vote)

    def predict(self, batch_inputs: dict, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Fused boxes and masks as ``pred_instances`` (``bboxes`` pixels, ``scores``,
        ``labels``, ``masks``: one RLE dict per box), ``test_cfg`` applied."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        runs = batch_inputs.get('masks')
        if runs is None:
            runs = _sample_masks(batch_data_samples)
        runs = MaskRuns(*(t.to(batch_inputs['scores'].device) for t in runs))
        if len(runs) != len(batch_inputs['scores']):
            raise ValueError(f'MaskFusionDetector: {len(runs)} member masks for '
                             f"{len(batch_inputs['scores'])} member boxes")
        (boxes, scores, labels, images), rles = fuse_packed_masks(
            self, batch_inputs, runs, self.mask_thr, self.vote, self.test_cfg['max_per_img'])
        keep = scores >= self.test_cfg['score_thr']
        sizes = torch.bincount(images[keep], minlength=len(batch_data_samples)).tolist()
        rles = [r for r, k in zip(rles, keep.tolist()) if k]
        results: List[InstanceData] = []
        start = 0
        for b, s, l, n in zip(boxes[keep].split(sizes), scores[keep].split(sizes),
                              labels[keep].split(sizes), sizes):
            inst = InstanceData()
            inst.bboxes, inst.scores, inst.labels = b.float(), s.float(), l.long()
            inst.masks = rles[start:start + n]
            start += n
            results.append(inst)
        return self.add_pred_to_datasample(batch_data_samples, results)


def _sample_masks(samples: SampleList) -> MaskRuns:
    """The cached member masks of a batch (``member_masks`` metainfo of each sample)."""
    parts = []
    for s in samples:
        if 'member_masks' not in s.metainfo:
            raise ValueError("MaskFusionDetector: the batch carries no member masks: use "
                             "CocoEnsembleDataset(with_masks=True) with PackEnsembleInputs("
                             "meta_keys=(..., 'member_masks')), or live instance-"
                             'segmentation members')
        parts.append(MaskRuns(*(torch.from_numpy(np.asarray(a, dtype=np.int64))
                                for a in s.metainfo['member_masks'])))
    return MaskRuns.cat(parts)
