"""The packed detections every packed fusion op and :func:`match_boxes` take,
and the one slicer of a packed batch by image."""
from typing import Dict, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ['CheckedDetections', 'PackedDetections', 'Repair', 'select_images']


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


class Repair(NamedTuple):
    """The repair :func:`~mmens.ops.validation.repair_boxes` makes, done
    already (by the list API's packer).

    Attributes:
        keep (Tensor[M]): bool, box has non-zero area after clipping.
        clipped (Tensor[N]): boxes clipped to ``[0, 1]``, per member.
        zero_area (Tensor[N]): boxes of zero area, per member.
    """
    keep: Tensor
    clipped: Tensor
    zero_area: Tensor


class CheckedDetections(PackedDetections):
    """:class:`PackedDetections` the list API's packer checked and repaired
    (``mmens/ops/csrc/pack_lists.cpp``): boxes float64 already clipped,
    labels long, every value within the input contract.

    :func:`~mmens.ops.validation.validate_fusion` does not check them again
    and :func:`~mmens.ops.validation.repair_boxes` takes :attr:`repair`.
    The attribute is not copied: a modified copy (``_replace``, ``to``) is a
    plain detections tuple to the checks, so it is checked in full.
    """

    def __new__(cls, *fields, repair: Repair):
        self = super().__new__(cls, *fields)
        self.repair = repair
        return self

    @classmethod
    def _make(cls, iterable) -> PackedDetections:
        return PackedDetections._make(iterable)

    def __reduce__(self):  # pickled as plain detections (see _make)
        return PackedDetections, tuple(self)


def select_images(packed: Dict[str, Tensor],
                  images: Union[Tensor, Sequence[int]]) -> Dict[str, Tensor]:
    """The part of a packed batch on some of its images, re-indexed.

    Args:
        packed (dict): per-box tensors (``bboxes [M, 4]``, ``scores``,
            ``labels``, ``members``, ``images [M]``, ...) and, optionally,
            ``image_sizes [I, 2]``; every key but ``image_sizes`` is per box.
        images (Tensor[J] | Sequence[int]): distinct positions of the images
            to keep; image ``images[j]`` becomes image ``j``.

    Returns:
        dict: the boxes on those images (in their packed order) with
        ``images`` renumbered ``0..J-1``, and their ``image_sizes``.
    """
    img = packed['images']
    pos = torch.as_tensor(images, dtype=torch.long, device=img.device)
    sizes = packed.get('image_sizes')
    n = int(torch.cat((img, pos)).max()) + 1 if img.numel() + pos.numel() else 0
    remap = torch.full((n, ), -1, dtype=torch.long, device=img.device)
    remap[pos] = torch.arange(pos.shape[0], device=img.device)
    new = remap[img]  # [M] new image index, -1 dropped
    keep = new >= 0  # [M]
    out = {k: v[keep] for k, v in packed.items() if k != 'image_sizes'}
    out['images'] = new[keep]
    if sizes is not None:
        out['image_sizes'] = sizes[pos.to(sizes.device)]
    return out
