"""Apply ensembles to member prediction files.

The names are imported on first use (:func:`mmens.utils.lazy.lazy_exports`): the fixed
rules and the member-file readers need neither mmdet, mmcv nor mmengine, and
``from mmens.apis import load_coco`` does not import the model-building of
:mod:`.inference`.
"""
from mmens.utils.lazy import lazy_exports

_EXPORTS = {
    'FixedEnsemble': 'fixed_ensemble',
    'build_fixed_ensemble': 'fixed_ensemble',
    'fuse_batch': 'inference',
    'fuse_batch_arrays': 'inference',
    'load_ensemble_checkpoint': 'inference',
    'member_remap': 'inference',
    'order_members': 'inference',
    'MemberBatch': 'member_files',
    'load_coco': 'member_files',
    'load_member_batch': 'member_files',
    'member_results': 'member_files',
    'results_to_coco': 'member_files',
    'select_images': 'member_files',
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
