"""Registry of the packed fusion ops, for the MMDetection detector.

Every entry has the packed signature ``fn(dets, *, weights=None,
**method_kwargs) -> (boxes [K, 4], scores [K], labels [K], images [K])``
with ``dets`` a :class:`~mmens.ops.packed.PackedDetections` and normalised
output boxes sorted by image then score descending; see each function for
its method-specific keyword arguments (``iou_thr``, ``skip_box_thr``,
``conf_type``, ...) and the shared ``class_agnostic`` / ``image_sizes``.
"""
from typing import Callable, Dict

from .nms import nms_packed
from .nmw import non_maximum_weighted_packed
from .soft_nms import soft_nms_packed
from .wbf import weighted_boxes_fusion_packed

__all__ = ['FUSION_METHODS']

FUSION_METHODS: Dict[str, Callable] = {
    'wbf': weighted_boxes_fusion_packed,
    'nms': nms_packed,
    'soft_nms': soft_nms_packed,
    'nmw': non_maximum_weighted_packed,
}
