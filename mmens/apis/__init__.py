from .inference import (build_fixed_ensemble, fuse_batch, fuse_batch_arrays,
                        load_ensemble_checkpoint, member_remap, order_members)
from .member_files import (MemberBatch, load_coco, load_member_batch, member_results,
                           results_to_coco, select_images)

__all__ = [
    'build_fixed_ensemble', 'fuse_batch', 'fuse_batch_arrays', 'load_ensemble_checkpoint',
    'member_remap',
    'order_members',
    'MemberBatch', 'load_coco', 'load_member_batch', 'member_results', 'results_to_coco',
    'select_images'
]
