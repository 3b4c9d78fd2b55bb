"""The packed detections every packed fusion op and :func:`match_boxes` take."""
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

__all__ = ['PackedDetections']


class PackedDetections(NamedTuple):
    """Detections of ``N`` members on ``I`` images, packed into flat tensors.

    Box ``j`` of the ``M`` boxes is ``boxes[j]`` with ``scores[j]`` and
    ``labels[j]``, predicted by member ``members[j]`` on image ``images[j]``.
    A tuple, so ``PackedDetections(*fields)`` and ``dets[0]`` work.

    Attributes:
        boxes (Tensor[M, 4]): ``(x1, y1, x2, y2)`` boxes, normalised to
            ``[0, 1]`` (pixels when the op is given ``image_sizes``).
        scores (Tensor[M]): scores in ``[0, 1]``.
        labels (Tensor[M]): integral labels.
        members (Tensor[M]): member of each box, ``0..N-1``.
        images (Tensor[M] | None): image of each box, ``0..I-1``; ``None``:
            all boxes are on image 0.
        num_members (int): ``N``.
        num_images (int): ``I`` (default 1).
    """
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    members: Tensor
    images: Optional[Tensor]
    num_members: int
    num_images: int = 1

    def to(self, device: Union[str, torch.device]) -> 'PackedDetections':
        """The same detections with every tensor on ``device``."""
        return self._replace(**{
            k: getattr(self, k).to(device)
            for k in ('boxes', 'scores', 'labels', 'members', 'images')
            if getattr(self, k) is not None
        })

    @classmethod
    def from_batch_inputs(cls, inputs: dict,
                          num_members: int) -> 'PackedDetections':
        """The detections of a detector's packed batch, boxes normalised.

        Args:
            inputs (dict): ``bboxes [M, 4]`` pixels, ``scores``, ``labels``,
                ``members``, ``images`` ``[M]`` and ``image_sizes [I, 2]``
                ``(width, height)`` (what ``EnsembleDataPreprocessor``
                gives).
            num_members (int): ``N``.

        Returns:
            PackedDetections: boxes divided by their image's size.
        """
        wh = inputs['image_sizes'][inputs['images']]  # [M, 2]
        return cls(inputs['bboxes'] / wh.repeat(1, 2), inputs['scores'],
                   inputs['labels'], inputs['members'], inputs['images'],
                   num_members, inputs['image_sizes'].shape[0])
