"""Apply ensembles to member prediction files.

The names are imported on first use (PEP 562), so that ``from mmens.apis import load_coco``
does not import :mod:`.inference` and its model-building, nor ``build_fixed_ensemble``
the member-file readers: each file tool imports what its method needs, and the fixed rules
need neither mmdet, mmcv nor mmengine.
"""
import importlib

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
