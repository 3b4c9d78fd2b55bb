"""A pycocotools ``COCO`` ground truth made from a batch's data samples (in memory)."""
import contextlib
import io
from typing import Sequence

from pycocotools.coco import COCO
from torch import Tensor

from mmens.ops.boxes import xyxy_to_xywh


def coco_from_samples(samples: Sequence, image_sizes: Tensor, num_classes: int) -> COCO:
    """Ground truth of a batch as a COCO object: image ``b`` has id ``b + 1``, label ``l``
    is category ``l + 1``; ``ignored_instances`` (COCO crowd boxes) are ``iscrowd = 1``.

    Args:
        samples (Sequence[DetDataSample]): ``gt_instances`` (and ``ignored_instances``) with
            pixel ``bboxes [G, 4]`` xyxy and ``labels [G]``.
        image_sizes (Tensor): ``[B, 2]`` ``(width, height)``.
        num_classes (int): categories ``1..num_classes`` exist (those without a box in the
            batch do not count in COCO's mean over categories).
    """
    images, anns = [], []
    sizes = image_sizes.tolist()
    for b, s in enumerate(samples):
        images.append(dict(id=b + 1, width=sizes[b][0], height=sizes[b][1]))
        for inst, crowd in ((s.gt_instances, 0), (s.get('ignored_instances', None), 1)):
            if inst is None or 'bboxes' not in inst:
                continue
            boxes = inst.bboxes.tensor if hasattr(inst.bboxes, 'tensor') else inst.bboxes
            xywh = xyxy_to_xywh(boxes.reshape(-1, 4).double())  # float64, as Python floats
            for box, label in zip(xywh.tolist(), inst.labels.tolist()):
                anns.append(dict(id=len(anns) + 1, image_id=b + 1, category_id=int(label) + 1,
                                 bbox=box, area=box[2] * box[3], iscrowd=crowd))
    coco = COCO()
    coco.dataset = dict(images=images, annotations=anns,
                        categories=[dict(id=c + 1, name=str(c)) for c in range(num_classes)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
