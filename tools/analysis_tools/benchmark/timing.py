"""Timing and peak memory of one fusion method on one load, as a :class:`Case`."""
import ctypes
import os
import threading
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .loads import pack, to_device, total_boxes
from .methods import fusion


class PeakRSS:
    """Peak growth of this process' RSS (bytes) while in the block.

    Freed heap is first returned to the OS (``malloc_trim``) and RSS is sampled every
    millisecond by a thread, so this sees torch's CPU allocator, which tracemalloc does
    not.
    """

    def __enter__(self) -> 'PeakRSS':
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except OSError:  # pragma: no cover (non-glibc)
            pass
        self.page = os.sysconf('SC_PAGE_SIZE')
        self.base = self.peak_abs = self._rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop:
            self.peak_abs = max(self.peak_abs, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()
        self.peak_abs = max(self.peak_abs, self._rss())
        self.peak = self.peak_abs - self.base


class _NoMemory:
    peak = None


@contextmanager
def peak_memory(device: str, on: bool) -> Iterator:
    """Peak memory of the block in ``.peak`` (None when not ``on``): CUDA max allocated,
    or the RSS growth on CPU."""
    if not on:
        yield _NoMemory()
    elif device == 'cuda':
        m = _NoMemory()
        torch.cuda.reset_peak_memory_stats()
        yield m
        m.peak = torch.cuda.max_memory_allocated()
    else:
        with PeakRSS() as m:
            yield m


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: The clock of every timing (``--clock``): wall time, or the CPU time of the
#: process, which a busy machine inflates far less (descheduled time is not
#: counted); with several threads the CPU time sums them, so it is for 1 thread.
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}
_clock = {'now': time.perf_counter}


def set_clock(name: str) -> None:
    """Time everything with ``CLOCKS[name]``."""
    _clock['now'] = CLOCKS[name]


def threads_label(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def time_mmens(fn: Callable, device: str, repeat: int,
               memory: str = '') -> Tuple[float, Optional[int], object]:
    """Best-of-``repeat`` seconds of ``fn()``, its peak memory (bytes) and its output.

    ``memory``: '' none; 'extra': one more, untimed call (the RSS sampler thread takes a
    little CPU); 'timed': during the timed calls (for calls of seconds, where one more
    would cost more than the sampler's reads of /proc every millisecond).
    """
    best, out, mem = float('inf'), None, None
    for _ in range(repeat):
        out = None  # the previous output is freed before the next call
        with peak_memory(device, memory == 'timed') as m:
            _sync(device)
            t0 = _clock['now']()
            out = fn()
            _sync(device)
            best = min(best, _clock['now']() - t0)
        mem = max(mem or 0, m.peak) if m.peak is not None else mem
    if memory == 'extra':
        with peak_memory(device, True) as m:
            fn()
        mem = m.peak
    return best, mem, out


def time_reference(ref_fn: Callable, load, n_ref: int,
                   memory: bool) -> Tuple[list, float, int, int]:
    """ensemble-boxes per image on the first ``n_ref`` images: outputs, s/image, peak
    tracemalloc and RSS (memory measured on a second pass over <= 20 images:
    tracemalloc slows the timed pass down)."""
    t0 = _clock['now']()
    ref = [ref_fn(img) for img in load[:n_ref]]
    t_ref = (_clock['now']() - t0) / max(n_ref, 1)
    peak = rss_peak = 0
    if memory:
        with PeakRSS() as rss:
            tracemalloc.start()
            for img in load[:min(n_ref, 20)]:
                ref_fn(img)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        rss_peak = rss.peak
    return ref, t_ref, peak, rss_peak


@dataclass
class Case:
    """One method on one load: times are of one call over all images."""
    method: str
    boxes: int  # per member per image
    images: int
    ref_images: int  # ensemble-boxes timed on the first ones
    ref_ms: float = 0.0  # ensemble-boxes per image
    ref_mem: int = 0  # tracemalloc peak
    ref_rss: int = 0
    secs: Dict[Tuple[str, int], float] = field(default_factory=dict)
    mem: Dict[Tuple[str, int], int] = field(default_factory=dict)
    total_boxes: int = 0
    checked: int = 0  # images compared with ensemble-boxes
    bad: Dict[str, List[int]] = field(default_factory=dict)

    def threads(self) -> List[int]:
        return sorted({t for _, t in self.secs})

    def ms(self, api: str, threads: int) -> float:
        return self.secs[api, threads] / self.images * 1e3

    def ratio(self, api: str, threads: int) -> float:
        return self.ref_ms / self.ms(api, threads)

    @property
    def equal(self) -> int:
        """Images where every output set equals ensemble-boxes'."""
        bad = set(i for v in self.bad.values() for i in v)
        return self.checked - len(bad)


def per_image_numpy(out, num_images: int) -> List[Tuple]:
    """Per-image NumPy ``(boxes, scores, labels)`` of a list API result or a packed
    ``(boxes, scores, labels, images)`` result (NumPy, so the check workers never touch
    torch)."""
    if isinstance(out, tuple):  # packed
        b, s, lab, im = (x.cpu().numpy() for x in out)
        cuts = np.cumsum(np.bincount(im, minlength=num_images))[:-1]
        return list(zip(*(np.split(x, cuts) for x in (b, s, lab))))
    return [tuple(np.asarray(x.cpu() if torch.is_tensor(x) else x) for x in img)
            for img in out]


def measure(name: str, load, boxes: int, n_ref: int, args, repeat: int,
            memory_threads: Sequence[int], memory: str = 'extra',
            ref_memory: bool = False) -> Tuple[Case, list, Dict[str, list]]:
    """Times ``name`` on ``load`` (``boxes`` per member per image): ensemble-boxes on the
    first ``n_ref`` images, mmens' two APIs at every ``args.threads`` (peak memory, see
    :func:`time_mmens`, at ``memory_threads``). Returns the case, ensemble-boxes' outputs
    and mmens' per-image outputs by "<api>, <threads>"."""
    fu = fusion(name)
    case = Case(name, boxes, len(load), n_ref, total_boxes=total_boxes(load))
    ref, t_ref, case.ref_mem, case.ref_rss = time_reference(fu.reference, load, n_ref,
                                                            ref_memory)
    case.ref_ms = t_ref * 1e3
    dev = args.device
    load_dev = to_device(load, dev)
    packed = pack(load, dev)
    outputs = {}
    for t in args.threads:
        with num_threads(t):
            fu.batch(load_dev[:2])  # warm up at this thread count
            for api, fn in (('list', lambda: fu.batch(load_dev)),
                            ('packed', lambda: fu.packed(packed))):
                secs, mem, out = time_mmens(fn, dev, repeat,
                                            memory if t in memory_threads else '')
                case.secs[api, t] = secs
                if mem is not None:
                    case.mem[api, t] = mem
                # "packed, ..." keys: compared in score order, see check.same()
                outputs[f'{api}, {threads_label(t)}'] = per_image_numpy(out, len(load))
                del out
    return case, ref, outputs
