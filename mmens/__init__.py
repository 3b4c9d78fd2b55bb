"""mmens: learned ensembling of object detectors, an MMDetection 3.x plugin.

Importing ``mmens`` checks the OpenMMLab versions and registers every mmens module into
mmdet's registries (``MODELS``, ``DATASETS``, ``TRANSFORMS``, ``METRICS``, ``MODEL_WRAPPERS``),
so configs need only ``custom_imports=dict(imports=['mmens'])``.

Without mmcv, mmdet or mmengine installed, nothing is registered and only
``__version__`` / ``version_info`` are set here: the pure-torch box ops of
:mod:`mmens.ops` need torch and numpy alone.
"""
from .version import __version__, version_info

_OPENMMLAB = ('mmcv', 'mmdet', 'mmengine')

try:
    import mmcv
    import mmdet
    import mmengine
except ModuleNotFoundError as _err:  # absent, not broken: only the ops are usable
    if (_err.name or '').partition('.')[0] not in _OPENMMLAB:
        raise
    HAS_MMDET = False
else:
    HAS_MMDET = True

if HAS_MMDET:
    from mmengine.utils import digit_version

    _REQUIRED = {
        'mmcv': (mmcv.__version__, '2.0.0rc4', '2.2.0'),
        'mmengine': (mmengine.__version__, '0.7.1', '1.0.0'),
        'mmdet': (mmdet.__version__, '3.0.0', '4.0.0'),
    }
    for _name, (_have, _low, _high) in _REQUIRED.items():
        if not digit_version(_low) <= digit_version(_have) < digit_version(_high):
            raise ImportError(f'mmens {__version__} needs {_name}>={_low},<{_high}, but '
                              f'{_name}=={_have} is installed; run `make setup`.')

    from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registration)
    from .utils import setup_safe_checkpoint_loading  # noqa: E402

    setup_safe_checkpoint_loading()

__all__ = ['__version__', 'version_info', 'HAS_MMDET']
