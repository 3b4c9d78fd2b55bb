"""Packing of ensemble samples."""
from mmdet.datasets.transforms import PackDetInputs
from mmens.registry import TRANSFORMS

from .loading import member_tensors


@TRANSFORMS.register_module()
class PackEnsembleInputs(PackDetInputs):
    """Pack a sample for an ensemble detector.

    Like mmdet's ``PackDetInputs`` (ground truth into ``data_samples.gt_instances``, meta keys
    into the metainfo), and in addition the member predictions into ``inputs['members']`` as a
    dict of tensors (``bboxes [M, 4]``, ``scores [M]``, ``labels [M]``, ``members [M]``).
    ``inputs['img']`` holds the image tensor when an image was loaded (live members and image
    features need it).
    """

    def __init__(self, meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                  'scale_factor')) -> None:
        super().__init__(meta_keys=meta_keys)

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        inputs = {}
        if 'inputs' in packed:
            inputs['img'] = packed['inputs']
        if 'member_bboxes' in results:
            inputs['members'] = member_tensors(results)
        packed['inputs'] = inputs
        return packed
