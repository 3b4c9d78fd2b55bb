"""Transforms that turn a sample's cached member predictions into tensors."""
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmens.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadMemberPredictions(BaseTransform):
    """Read ``member_preds`` (set by :class:`CocoEnsembleDataset`) into ``results``.

    Sets the keys an image loader would set, so that mmdet's ``LoadAnnotations`` and
    ``PackDetInputs`` work without decoding the image: ``img_shape`` and ``ori_shape``
    (``(height, width)``) and ``scale_factor`` ``(1.0, 1.0)``.

    Added keys: ``member_bboxes`` ``[M, 4]`` (pixels, ``x1, y1, x2, y2``), ``member_scores``
    ``[M]``, ``member_labels`` ``[M]``, ``member_ids`` ``[M]``.
    """

    def transform(self, results: dict) -> dict:
        if 'member_preds' not in results:
            raise ValueError(
                f"sample {results.get('img_id')}: no 'member_preds'; use "
                'CocoEnsembleDataset (cached predictions) with LoadMemberPredictions')
        preds = results['member_preds']
        results['member_bboxes'] = np.asarray(preds['bboxes'], dtype=np.float32).reshape(-1, 4)
        results['member_scores'] = np.asarray(preds['scores'], dtype=np.float32)
        results['member_labels'] = np.asarray(preds['labels'], dtype=np.int64)
        results['member_ids'] = np.asarray(preds['members'], dtype=np.int64)
        shape = (int(results['height']), int(results['width']))
        results.setdefault('img_shape', shape)
        results.setdefault('ori_shape', shape)
        results.setdefault('scale_factor', (1.0, 1.0))
        return results


def member_tensors(results: dict) -> dict:
    """The member prediction arrays of ``results`` as a dict of tensors."""
    return dict(
        bboxes=torch.from_numpy(results['member_bboxes']),   # [M, 4]
        scores=torch.from_numpy(results['member_scores']),   # [M]
        labels=torch.from_numpy(results['member_labels']),   # [M]
        members=torch.from_numpy(results['member_ids']))     # [M]
