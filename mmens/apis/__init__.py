"""Apply ensembles to member prediction files.

The names are imported on first use (:func:`mmens.utils.lazy.lazy_exports`): the fixed
rules and the member-file readers need neither mmdet, mmcv nor mmengine, and
``from mmens.apis import load_coco`` does not import the model-building of
:mod:`.inference`.
"""
from mmens.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'fixed_ensemble': ['FixedEnsemble', 'build_fixed_ensemble'],
    'inference': ['fuse_batch', 'fuse_batch_arrays', 'load_ensemble_checkpoint',
                  'member_remap', 'order_members'],
    'member_files': ['MemberBatch', 'load_coco', 'load_member_batch', 'member_results',
                     'results_to_coco', 'select_images'],
})
