"""Package exports imported on first use (PEP 562).

A package whose modules need different dependencies (e.g. :mod:`mmens.datasets`: the
COCO-results readers need numpy, the dataset needs mmdet) exports its names lazily, so
that importing one light module does not import the heavy ones of its package.
"""
import importlib
from typing import Callable, Dict, List, Sequence, Tuple


def lazy_exports(package: str, modules: Dict[str, Sequence[str]]
                 ) -> Tuple[List[str], Callable[[str], object], Callable[[], List[str]]]:
    """``__all__``, and the module ``__getattr__`` and ``__dir__`` of ``package``, that
    import each name of ``modules`` (submodule, relative to ``package`` -> its exported
    names) the first time it is used.

    Example::

        __all__, __getattr__, __dir__ = lazy_exports(__name__, {
            'ensemble_dataset': ['CocoEnsembleDataset', 'fold_image_ids']})
    """
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(f'.{where[name]}', package), name)
        setattr(importlib.import_module(package), name, value)  # no second look-up here
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    return list(where), __getattr__, __dir__
