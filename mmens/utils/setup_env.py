"""Set-up: registration, weights-only checkpoint loading and CPU distributed runs.

Nothing here changes mmengine or torch for the whole process: the checkpoint allow-list is
applied only inside :func:`safe_torch_load` (mmens' tools and :class:`EnsembleRunner` load
through it), and mmengine is imported inside the functions that need it, so
``import mmens.utils`` stays light.
"""
import functools
import os
import os.path as osp
import pickle
import re

import numpy as np
import torch
import torch.distributed as dist


def safe_checkpoint_globals() -> list:
    """The classes mmengine checkpoints hold besides tensors.

    torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 saves its ``MessageHub``
    (``HistoryBuffer`` objects holding numpy arrays and scalars) in every checkpoint, which
    that unpickler rejects. These are exactly the extra classes it needs; nothing else is
    allowed, so loading a checkpoint still never runs arbitrary code.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = getattr(np, '_core', None) or np.core
    dtype_classes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32',
                                                   'bool')]
    return [HistoryBuffer, multiarray.multiarray._reconstruct,
            multiarray.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses: unpickling it would
    need a global (a function or class) that is not on mmens' allow-list, i.e. it could
    run code. A ``ValueError``, so :func:`mmens.utils.run_cli` prints it as one line."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is not a readable torch checkpoint (truncated, corrupt)."""


_GLOBAL_PATTERNS = (
    # 'Unsupported global: GLOBAL __main__.Foo was not an allowed global by default' and
    # 'Trying to load unsupported GLOBAL posix.system whose module posix is blocked'
    re.compile(r'[Uu]nsupported (?:global: )?GLOBAL ([\w.<>]+)'),
    re.compile(r'Trying to call reduce for unrecognized function <[^>]*?([\w.]+)>'),
    re.compile(r'Unsupported class ([\w.<>]+)'),
)


def unsafe_checkpoint_error(path: str, error: BaseException) -> UnsafeCheckpointError:
    """A one-line :class:`UnsafeCheckpointError` for torch's weights-only refusal.

    torch's message is many lines (how to load the file anyway, links); the one fact that
    matters is the global it refused, parsed from its ``WeightsUnpickler error`` part.
    """
    text = str(error)
    for pattern in _GLOBAL_PATTERNS:
        m = pattern.search(text)
        if m:
            return UnsafeCheckpointError(
                f"{path}: refused to load: it needs the global '{m.group(1)}', which is "
                "not on mmens' allow-list (a checkpoint must never run code)")
    if 'WeightsUnpickler error:' in text:
        lines = text.split('WeightsUnpickler error:', 1)[1].strip().splitlines()
    else:  # torch's advice paragraphs first, the reason after them
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()
                 and not ln.startswith('Check the documentation')]
    detail = lines[0].strip() if lines else 'not a weights-only checkpoint'
    return UnsafeCheckpointError(
        f'{path}: refused to load: {detail} (only tensors and mmens\' allow-listed '
        'classes are loaded; a checkpoint must never run code)')


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split('. ')[0] if text else type(error).__name__


def safe_torch_load(path: str, map_location=None):
    """``torch.load(path, weights_only=True)`` with one-line errors (``ValueError`` subclasses).

    A missing file, a file that is not a torch checkpoint (:class:`CorruptCheckpointError`)
    and a checkpoint that needs a global outside the allow-list
    (:class:`UnsafeCheckpointError`) raise errors that name the file, without torch's
    multi-line text. Nothing but allow-listed data is ever unpickled.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise ValueError(f'checkpoint {path} does not exist')
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head.startswith((b'PK\x03\x04', b'\x80')):  # torch's zip format, a pickle
        raise CorruptCheckpointError(
            f'{path}: is not a torch checkpoint (' +
            ('an empty file' if not head else 'neither a zip archive nor a pickle') + ')')
    try:
        with torch.serialization.safe_globals(safe_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' in str(e) or 'WeightsUnpickler' in str(e):
            raise unsafe_checkpoint_error(path, e) from None
        raise CorruptCheckpointError(
            f'{path}: is not a readable torch checkpoint (truncated or corrupt?): '
            f'{_first_sentence(e)}') from None
    except (EOFError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, RuntimeError) and not re.search(
                r'PytorchStreamReader|zip archive|Invalid magic number|storage has wrong',
                text):
            raise
        raise CorruptCheckpointError(
            f'{path}: is not a readable torch checkpoint (truncated or corrupt?): '
            f'{_first_sentence(e)}') from None


@functools.lru_cache(maxsize=None)
def _data_only_history_buffer() -> type:
    """A ``HistoryBuffer`` that pickles as a plain ``HistoryBuffer`` holding data only.

    mmengine's ``HistoryBuffer.__getstate__`` adds its statistics *functions*
    (``{'min': HistoryBuffer.min, ...}``), which pickle stores as
    ``getattr(HistoryBuffer, 'min')``; allowing ``getattr`` would let a checkpoint call
    anything. This subclass pickles as ``HistoryBuffer()`` plus the histories (its own name
    never enters the file); ``HistoryBuffer.__setstate__`` restores the built-in statistics
    (statistics a caller registered with ``HistoryBuffer.register_statistics`` are not
    saved). Only the copies that :func:`data_only_message_hub` makes are of this class:
    mmengine's ``HistoryBuffer`` is not patched, so no other caller changes.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    class DataOnlyHistoryBuffer(HistoryBuffer):

        def __reduce_ex__(self, protocol):
            state = {k: v for k, v in vars(self).items() if k != 'statistics_methods'}
            return HistoryBuffer, (), state

    return DataOnlyHistoryBuffer


def data_only_message_hub(state: dict) -> dict:
    """``MessageHub.state_dict()`` whose ``HistoryBuffer`` objects hold data only, so the
    checkpoint loads under ``weights_only=True`` with :func:`safe_checkpoint_globals`."""
    from mmengine.logging.history_buffer import HistoryBuffer
    state = dict(state)
    data_only = _data_only_history_buffer()
    scalars = {}
    for key, buffer in state.get('log_scalars', {}).items():
        if isinstance(buffer, HistoryBuffer):
            copy = object.__new__(data_only)
            copy.__dict__.update(vars(buffer))
            buffer = copy
        scalars[key] = buffer
    state['log_scalars'] = scalars
    return state


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every mmens module into mmens' registries (:mod:`mmens.registry`).

    As mmdet's and mmyolo's ``register_all_modules``: configs with
    ``default_scope = 'mmens'`` do not need it (the registries import their ``locations``
    on first use); code that builds mmens modules itself calls it once. It first checks
    the installed OpenMMLab versions (``import mmens`` imports none of them).

    Args:
        init_default_scope (bool): also make ``'mmens'`` the default scope, so that
            ``MODELS.build`` of any registry resolves mmens (and, through its parents,
            mmdet and mmengine) names.
    """
    check_openmmlab_versions()
    import mmdet.engine  # noqa: F401  (mmdet's hooks and visualizer, named by configs)
    import mmdet.visualization  # noqa: F401

    import mmens.datasets.ensemble_dataset  # noqa: F401
    import mmens.datasets.transforms  # noqa: F401
    import mmens.engine  # noqa: F401
    import mmens.evaluation.subset_coco_metric  # noqa: F401
    import mmens.models  # noqa: F401
    if init_default_scope:
        from mmengine.registry import init_default_scope as init_scope
        init_scope('mmens')


# the versions mmens is tested with (lower bound included, upper bound excluded)
_REQUIRED = {'mmcv': ('2.0.0rc4', '2.2.0'), 'mmengine': ('0.7.1', '1.0.0'),
             'mmdet': ('3.0.0', '4.0.0')}


def check_openmmlab_versions() -> None:
    """Raise a one-line ``ImportError`` when mmcv, mmengine or mmdet is outside the
    range mmens supports (a broken or absent install raises its own ImportError)."""
    import importlib

    from mmengine.utils import digit_version

    from mmens.version import __version__
    for name, (low, high) in _REQUIRED.items():
        have = importlib.import_module(name).__version__
        if not digit_version(low) <= digit_version(have) < digit_version(high):
            raise ImportError(f'mmens {__version__} needs {name}>={low},<{high}, but '
                              f'{name}=={have} is installed; run `make setup`.')


def init_cpu_distributed(launcher: str) -> None:
    """Start a gloo process group for ``--launcher pytorch`` on a machine without CUDA.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device``, which fails without a GPU;
    once a group exists, the runner uses it as it is. With CUDA this does nothing.
    """
    if launcher != 'pytorch' or torch.cuda.is_available() or not dist.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))


def shutdown_distributed() -> None:
    """Wait for every process, then destroy the process group (if one was started).

    Without it, a gloo group torn down at interpreter exit can abort a process ("terminate
    called without an active exception") after its work is done, failing the launcher.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
