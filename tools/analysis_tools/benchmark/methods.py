"""The fusion functions the benchmark times and checks, and the backend they run on."""
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import mmens.ops as mo
from mmens.ops import kernel

# method: (function name in ensemble_boxes and in mmens.ops, printed name)
METHODS: Dict[str, Tuple[str, str]] = {
    'wbf': ('weighted_boxes_fusion', 'WBF'),
    'nms': ('nms', 'NMS'),
    'soft_nms': ('soft_nms', 'soft-NMS'),
    'nmw': ('non_maximum_weighted', 'NMW'),
}

APIS = ('list', 'packed')


class Fusion(NamedTuple):
    """The functions one method is timed and checked with."""
    reference: Callable  # ensemble-boxes on one image
    batch: Callable  # mmens list API on all images: results per image
    packed: Callable  # mmens packed API: (boxes, scores, labels, images)


def fusion(name: str) -> Fusion:
    """The one place the fusion functions are looked up (the mmens.ops backend they run
    on is chosen once, by :func:`select_backend`)."""
    import ensemble_boxes  # here: its numba set-up is slow to import
    fn_name = METHODS[name][0]
    ref = getattr(ensemble_boxes, fn_name)
    return Fusion(lambda img: ref(*[list(x) for x in img]),
                  getattr(mo, fn_name + '_batch'),
                  getattr(mo, fn_name + '_packed'))


def select_backend(name: Optional[str]) -> None:
    """``--backend``: applied once, before anything runs, so every fusion call (all
    through :func:`fusion`) uses it."""
    if name is not None:
        kernel.set_backend(name)


def backend_note(device: str = 'cpu') -> str:
    """Which code mmens' fusion runs (printed with the results, since the numbers
    depend on it)."""
    name = kernel.get_backend()
    if device != 'cpu' or name == 'torch':
        runs = 'pure torch'
    elif kernel.kernel_available():
        runs = 'compiled kernel'
    else:
        runs = 'pure torch, the kernel is not built'
    return f'mmens ops backend {name!r}: {runs}'
