"""Batching of cached member predictions into flat (packed) tensors."""
from typing import Optional, Sequence

import torch
from mmens.registry import MODELS
from mmengine.model import BaseDataPreprocessor
from torch import Tensor

from mmens.utils.batch import uncollate

#: the per-box fields of an image's cached member predictions, packed by :func:`pack_members`
PREDICTION_FIELDS = ('bboxes', 'scores', 'labels', 'members')


def pack_members(samples: Sequence[dict], image_sizes: Tensor) -> dict:
    """Concatenate per-image member predictions into one flat batch.

    Args:
        samples (Sequence[dict]): per image, ``bboxes`` ``Tensor[M_b, 4]`` (pixels, xyxy),
            ``scores`` ``Tensor[M_b]``, ``labels`` ``Tensor[M_b]``, ``members`` ``Tensor[M_b]``.
        image_sizes (Tensor): ``Tensor[B, 2]`` ``(width, height)`` per image.

    Returns:
        dict: ``bboxes [M, 4]``, ``scores [M]``, ``labels [M]``, ``members [M]``,
        ``images [M]`` (index of the image in the batch) and ``image_sizes [B, 2]``.
    """
    device = image_sizes.device
    counts = [int(s['scores'].shape[0]) for s in samples]  # host-side shapes, no sync
    packed = {k: torch.cat([s[k].reshape(-1, 4) if k == 'bboxes' else s[k].reshape(-1)
                            for s in samples]) if samples else torch.zeros(0, device=device)
              for k in PREDICTION_FIELDS}
    packed['bboxes'] = packed['bboxes'].float().reshape(-1, 4)  # [M, 4]
    packed['scores'] = packed['scores'].float()  # [M]
    packed['labels'] = packed['labels'].long()  # [M]
    packed['members'] = packed['members'].long()  # [M]
    packed['images'] = torch.repeat_interleave(
        torch.arange(len(samples), device=device),
        torch.tensor(counts, device=device, dtype=torch.long))  # [M]
    packed['image_sizes'] = image_sizes  # [B, 2]
    return packed


@MODELS.register_module()
class EnsembleDataPreprocessor(BaseDataPreprocessor):
    """Data preprocessor of ensemble detectors over cached member predictions.

    Moves the batch to the model's device and packs the member predictions of all images
    into flat tensors (see :func:`pack_members`); the packed dict becomes ``inputs``.
    When the samples carry images (``inputs['img']``), they are passed through
    ``image_preprocessor`` (e.g. mmdet's ``DetDataPreprocessor``) and returned as
    ``inputs['img']``; the raw images stay in ``inputs['img_raw']`` (live members apply
    their own preprocessing to them).

    Args:
        image_preprocessor (dict, optional): config of an image data preprocessor.
    """

    def __init__(self, image_preprocessor: Optional[dict] = None,
                 non_blocking: bool = False) -> None:
        super().__init__(non_blocking=non_blocking)
        self.image_preprocessor = (MODELS.build(image_preprocessor)
                                   if image_preprocessor is not None else None)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs, samples = data['inputs'], data['data_samples']
        if isinstance(inputs, dict):  # pseudo_collate: a dict of per-sample lists
            members, imgs = inputs.get('members'), inputs.get('img')
        else:  # a list of per-sample dicts
            first = inputs[0] if len(inputs) else {}
            members = [s['members'] for s in inputs] if 'members' in first else None
            imgs = [s['img'] for s in inputs] if 'img' in first else None
        sizes = torch.tensor([[s.img_shape[1], s.img_shape[0]] for s in samples],
                             dtype=torch.float32, device=self.device).reshape(-1, 2)
        out: dict = {'image_sizes': sizes}
        if members is not None:
            if isinstance(members, dict):  # pseudo_collate: a dict of per-sample lists
                members = [uncollate(members, i) for i in range(len(samples))]
            out = pack_members(list(members), sizes)
        if imgs is not None:
            out['img_raw'] = list(imgs)  # what live members run on
            if self.image_preprocessor is not None:
                img_data = self.image_preprocessor(
                    dict(inputs=list(imgs), data_samples=samples), training)
                out['img'], samples = img_data['inputs'], img_data['data_samples']
            else:
                out['img'] = list(imgs)
        return dict(inputs=out, data_samples=samples)
