"""Process-level set-up: safe checkpoint loading and CPU distributed runs."""
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


def load_from_local(filename: str, map_location=None):
    """mmengine's local-file checkpoint loader (``CheckpointLoader`` scheme ``''``) through
    :func:`safe_torch_load`: ``tools/test.py``, ``tools/train.py --resume`` and ``load_from``
    refuse unsafe checkpoints with one line. (Named ``load_from_local`` because mmengine
    logs ``Loads checkpoint by <name[10:]> backend``.)"""
    return safe_torch_load(filename, map_location=map_location)


def _history_buffer_getstate(self) -> dict:
    """``HistoryBuffer`` state without its statistics *functions*.

    mmengine pickles ``_statistics_methods`` (``{'min': HistoryBuffer.min, ...}``), which
    the pickle stores as ``getattr(HistoryBuffer, 'min')``; allowing ``getattr`` would let a
    checkpoint call anything. The built-in methods are restored by
    ``HistoryBuffer.__setstate__`` itself (``_set_default_statistics``), so the state is
    saved without them and the checkpoint holds data only.
    """
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def setup_safe_checkpoint_loading() -> None:
    """Make mmengine checkpoints load with ``torch.load(weights_only=True)``.

    Allow-lists :func:`safe_checkpoint_globals` (data classes only) and makes
    ``HistoryBuffer`` save no function references (see :func:`_history_buffer_getstate`).
    ``weights_only`` stays on: loading a checkpoint never runs arbitrary code. mmengine's
    local checkpoint loader is replaced by :func:`load_from_local`, whose refusals are
    one-line ``ValueError`` subclasses (:class:`UnsafeCheckpointError`).
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(safe_checkpoint_globals())
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


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
