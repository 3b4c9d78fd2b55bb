"""Package exports imported on first use (PEP 562).

A package whose modules need different dependencies (e.g. :mod:`mmens.datasets`: the
COCO-results readers need numpy, the dataset needs mmdet) exports its names lazily, so
that importing one light module does not import the heavy ones of its package.
"""
import importlib
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]
                 ) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` that import each name of
    ``exports`` (name -> submodule, relative to ``package``) the first time it is used.

    Example::

        __getattr__, __dir__ = lazy_exports(__name__, {'CocoEnsembleDataset':
                                                       'ensemble_dataset'})
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        module = importlib.import_module(f'.{exports[name]}', package)
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)  # no second look-up here
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
