"""mmens: learned ensembling of object detectors, an MMDetection 3.x plugin.

``import mmens`` (and ``import mmens.ops``) imports no OpenMMLab package and registers
nothing: the box ops need torch and numpy only. mmens' modules live in its own registry
nodes (:mod:`mmens.registry`, children of mmdet's). A config with
``default_scope = 'mmens'`` builds them, importing them on first use; code that builds
them outside a config-driven Runner calls :func:`mmens.utils.register_all_modules` first,
which also checks the installed mmcv/mmengine/mmdet versions.
"""
# torch first: the compiled kernel mmens._ext links against torch's shared libraries
# (libc10, libtorch), which only an imported torch puts in the process
import torch  # noqa: F401

from .version import __version__, version_info

__all__ = ['__version__', 'version_info']
