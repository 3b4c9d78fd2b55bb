"""Process-level set-up: safe checkpoint loading and CPU distributed runs."""
import os

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
    ``weights_only`` stays on: loading a checkpoint never runs arbitrary code.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(safe_checkpoint_globals())


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
