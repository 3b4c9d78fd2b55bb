"""Backend choice of the fusion ops: compiled CPU kernel or pure torch.

``mmens._ext`` (built from ``mmens/ops/csrc`` by ``pip install -e .``) runs
WBF, NMW, NMS and soft-NMS on CPU tensors, one plain loop per ``(image,
label)`` group and the groups in parallel (OpenMP, ``torch.get_num_threads()``
threads). The pure-torch path stays for CUDA tensors and is the fallback,
with one warning, when the extension is missing. Both backends take their
input only through :func:`~mmens.ops.validation.validate_fusion`, so they
also raise the same error on the same mistake.

Numerical contract between the two backends, on the same input (tested in
``tests/test_ops/test_kernel.py`` and by the fuzz test):

* WBF (and :func:`~mmens.ops.match_boxes`), NMW and hard NMS
  (:data:`EXACT_METHODS`): identical outputs, ``torch.equal`` on every
  tensor (values, order, dtypes);
* soft-NMS: the linear decay is identical; each gaussian decay factor
  ``exp(-IoU**2 / sigma)`` lies within :data:`SOFT_NMS_DECAY_ULPS` ulp of the
  other backend's. Both call a faithfully rounded exp (SLEEF's, the one
  torch uses, or libm's in the portable build), so the factors are
  bit-equal where torch dispatches to the same SLEEF routine as the kernel
  (AVX2 hosts without AVX-512) and may differ in the last bit elsewhere
  (AVX-512 hosts, ``MMENS_PORTABLE=1`` builds). The boxes kept, their order
  and the (original) scores returned are identical unless a decayed score
  lies within that rounding of ``thresh`` or of another decayed score.

Backends (``set_backend``, the :func:`backend` context manager, or the
``MMENS_OPS_BACKEND`` environment variable):

* ``'auto'`` (default): the kernel for CPU tensors when built, else torch;
* ``'cpp'``: the kernel for CPU tensors, an error when it is missing;
* ``'torch'``: always the pure-torch path.
"""
import contextlib
import os
import warnings
from typing import Iterator, Optional

from torch import Tensor

__all__ = ['BACKENDS', 'EXACT_METHODS', 'SOFT_NMS_DECAY_ULPS', 'backend',
           'get_backend', 'set_backend', 'use_kernel', 'kernel_available']

BACKENDS = ('auto', 'cpp', 'torch')

#: Fusion methods whose outputs are identical on both backends.
EXACT_METHODS = ('wbf', 'nmw', 'nms')

#: Largest difference, in units in the last place, between the backends'
#: gaussian soft-NMS decay factors.
SOFT_NMS_DECAY_ULPS = 1

try:
    from mmens import _ext
    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as e:  # not built (MMENS_WITH_KERNEL=0, or no compiler)
    _ext = None
    _IMPORT_ERROR = e

_state = {'backend': 'auto', 'warned': False}


def set_backend(name: str) -> None:
    """Choose the fusion backend: ``'auto'``, ``'cpp'`` or ``'torch'``."""
    if name not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {name!r}')
    _state['backend'] = name


def get_backend() -> str:
    """The current fusion backend name."""
    return _state['backend']


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the block with the fusion backend ``name``."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def kernel_available() -> bool:
    """Whether the compiled kernel ``mmens._ext`` is importable."""
    return _ext is not None


def use_kernel(t: Tensor) -> bool:
    """Whether a fusion op on tensors like ``t`` runs the compiled kernel.

    Raises:
        RuntimeError: backend ``'cpp'`` without the kernel.
    """
    name = _state['backend']
    if name == 'torch' or t.device.type != 'cpu':
        return False
    if _ext is not None:
        return True
    if name == 'cpp':
        raise RuntimeError(f'mmens: the compiled fusion kernel is not built '
                           f'({_IMPORT_ERROR}); run `make setup`')
    if not _state['warned']:
        _state['warned'] = True
        warnings.warn(
            'mmens: compiled fusion kernel not built, using the pure-torch '
            'path (10-50x slower on CPU); run `make setup` or `pip install '
            '-e . --no-build-isolation`', stacklevel=3)
    return False


def _backend_from_env() -> str:
    """``MMENS_OPS_BACKEND``; a wrong value warns in one line (an import must
    not fail on it) and leaves ``'auto'``."""
    name = os.environ.get('MMENS_OPS_BACKEND', 'auto')
    if name in BACKENDS:
        return name
    warnings.warn(f'mmens: MMENS_OPS_BACKEND={name!r} is not one of '
                  f'{", ".join(BACKENDS)}; using auto', stacklevel=2)
    return 'auto'


set_backend(_backend_from_env())
