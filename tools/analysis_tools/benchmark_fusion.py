"""Benchmark mmens' batched box fusion against ensemble-boxes.

Generates seeded COCO-like loads (each member outputs jittered copies of a
few "true" objects per image, tight for high scores and loose for low ones,
some with a confused label; statistics close to data/coco_real), then in one
run, for each of ``--methods`` (wbf, nms, soft_nms by default; nmw too):

* main load (``--images`` 500 x ``--members`` 5 x ``--boxes`` 100): times
  ensemble-boxes per image on every image (NumPy, single-threaded, one image
  at a time as it is used in practice) and mmens batched over all images in
  one call, through the list API (``*_batch``, packing included) and the
  packed tensor API (``*_packed``, input already packed on ``--device``),
  each at 1 thread and at all threads (``--threads``: mmens' compiled kernel
  parallelises over (image, class) groups), with peak memory (tracemalloc
  for the NumPy reference; sampled RSS growth on CPU, since torch's CPU
  allocator is invisible to tracemalloc; ``torch.cuda.max_memory_allocated``
  on CUDA);
* boxes per member (``--sizes`` 300 1000, next to the main load's 100), on
  fewer images (``--size-images``): ensemble-boxes' cost grows about
  quadratically with the boxes, so it is timed on the first ``--ref-images``
  images only and its time per image extrapolated;
* a COCO-val-sized load (``--coco-images`` 5,000 images x the main load's
  members and boxes, whose first ``--images`` images are the main load) fused
  in one call, in seconds;
* checks that the outputs equal ensemble-boxes' (values within 1e-5;
  order-insensitive only where the reference order is arbitrary, i.e. tied
  scores) on every image of every load, for both APIs and every thread count.
  Images ensemble-boxes was not timed on are run untimed in ``--workers``
  processes (``--check-images`` limits the check);
* prints issue 17's targets (1 thread, list API) next to the measured ratios,
  and ends with Markdown tables for docs/benchmarks.md and the README, with
  the command that produced them.

``--sweep`` also reports how the time per image grows with members and boxes.

Example (``make bench``: 5.6 min on the shared 2-core machine at load
average ~5, two thirds of it ensemble-boxes checking the 5,000-image load;
``--check-images 500`` checks that load on the main load's images only)::

    python tools/analysis_tools/benchmark_fusion.py

Small and quick::

    python tools/analysis_tools/benchmark_fusion.py --images 50 --sizes 300 \\
        --size-images 20 --ref-images 5 --coco-images 200
"""
import argparse
import ctypes
import multiprocessing as mp
import os
import os.path as osp
import queue
import shlex
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (Callable, Dict, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

import numpy as np
import torch

import mmens.ops as mo

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# method: (function name in ensemble_boxes and in mmens.ops, printed name)
METHODS: Dict[str, Tuple[str, str]] = {
    'wbf': ('weighted_boxes_fusion', 'WBF'),
    'nms': ('nms', 'NMS'),
    'soft_nms': ('soft_nms', 'soft-NMS'),
    'nmw': ('non_maximum_weighted', 'NMW'),
}

# Issue 17's "done when", at 1 thread on the main load: speed-up of the list
# API (packing included, what an ensemble-boxes user would call) over
# ensemble-boxes; and the COCO-val-sized load in one call, in seconds.
TARGETS: Dict[str, float] = {'wbf': 100.0, 'nms': 5.0, 'soft_nms': 50.0}
COCO_TARGET_S = 5.0

APIS = ('list', 'packed')


class Fusion(NamedTuple):
    """The functions one method is timed and checked with."""
    reference: Callable  # ensemble-boxes on one image
    batch: Callable  # mmens list API on all images: results per image
    packed: Callable  # mmens packed API: (boxes, scores, labels, images)


def fusion(name: str) -> Fusion:
    """The one place the fusion functions are looked up (the mmens.ops
    backend they run on is chosen once, by :func:`select_backend`)."""
    import ensemble_boxes  # here: its numba set-up is slow to import
    fn_name = METHODS[name][0]
    ref = getattr(ensemble_boxes, fn_name)
    return Fusion(lambda img: ref(*[list(x) for x in img]),
                  getattr(mo, fn_name + '_batch'),
                  getattr(mo, fn_name + '_packed'))


def kernel_module():
    """``mmens.ops.kernel`` (the backend switch of the fusion ops), or None
    in trees that have no compiled kernel."""
    try:
        from mmens.ops import kernel
    except ImportError:
        return None
    return kernel


def select_backend(name: Optional[str]) -> None:
    """``--backend``: applied once, before anything runs, so every fusion
    call (all through :func:`fusion`) uses it."""
    if name is None:
        return
    kernel = kernel_module()
    if kernel is None:
        raise SystemExit('--backend: this mmens.ops has no backend switch '
                         '(mmens.ops.kernel)')
    kernel.set_backend(name)


def backend_note(device: str = 'cpu') -> str:
    """Which code mmens' fusion runs (printed with the results, since the
    numbers depend on it)."""
    kernel = kernel_module()
    if kernel is None:
        return 'mmens ops: pure torch'
    name = kernel.get_backend()
    if device != 'cpu' or name == 'torch':
        runs = 'pure torch'
    elif kernel.kernel_available():
        runs = 'compiled kernel'
    else:
        runs = 'pure torch, the kernel is not built'
    return f'mmens ops backend {name!r}: {runs}'


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods',
                   nargs='+',
                   default=['wbf', 'nms', 'soft_nms'],
                   choices=sorted(METHODS))
    p.add_argument('--images', type=int, default=500,
                   help='images of the main load (ensemble-boxes timed on '
                   'all)')
    p.add_argument('--members', type=int, default=5)
    p.add_argument('--boxes',
                   type=int,
                   default=100,
                   help='boxes per member per image of the main and the '
                   'COCO-sized loads')
    p.add_argument('--classes', type=int, default=80)
    p.add_argument('--objects',
                   type=int,
                   default=8,
                   help='max true objects per image (uniform 1..N)')
    p.add_argument('--sizes',
                   type=int,
                   nargs='*',
                   default=[300, 1000],
                   help='further boxes per member to time (none: skip)')
    p.add_argument('--size-images',
                   type=int,
                   nargs='+',
                   default=[100, 20],
                   help='images at each of --sizes (one value: all sizes); '
                   'fewer at 1,000 boxes keep the pure-torch run short')
    p.add_argument('--ref-images',
                   type=int,
                   nargs='+',
                   default=[20, 5],
                   help='ensemble-boxes timed on the first N images at each '
                   'of --sizes (per-image time extrapolated; the rest is '
                   'still checked, untimed)')
    p.add_argument('--coco-images',
                   type=int,
                   default=5000,
                   help='COCO-val-sized load fused in one call (0: skip)')
    p.add_argument('--check-images',
                   type=int,
                   default=None,
                   help='compare outputs on the first N images of each load '
                   'only (default: every image)')
    p.add_argument('--workers',
                   type=int,
                   default=os.cpu_count() or 1,
                   help='processes running ensemble-boxes, untimed, for the '
                   'output check of the images it was not timed on')
    p.add_argument('--threads',
                   type=int,
                   nargs='+',
                   default=None,
                   help='torch thread counts to time mmens at (default: 1 '
                   'and all, i.e. os.cpu_count(); ensemble-boxes is '
                   'single-threaded NumPy)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--backend',
                   default=None,
                   choices=['auto', 'cpp', 'torch'],
                   help='mmens.ops fusion backend (default: as set, i.e. '
                   'MMENS_OPS_BACKEND or auto)')
    p.add_argument('--repeat',
                   type=int,
                   default=3,
                   help='main load: best of N mmens runs (other loads: one '
                   'run, their calls take seconds)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sweep',
                   action='store_true',
                   help='also time members x boxes grids (mmens packed at '
                   'the first --threads, ensemble-boxes on 20 images)')
    args = p.parse_args(argv)
    for name in ('images', 'members', 'boxes', 'classes', 'objects',
                 'repeat', 'workers'):
        if getattr(args, name) < 1:
            p.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    for name in ('sizes', 'size_images', 'ref_images', 'threads'):
        vals = getattr(args, name) or []
        if any(v < 1 for v in vals):
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {vals}")
        if name in ('size_images', 'ref_images') and args.sizes:
            if len(vals) == 1:
                setattr(args, name, vals * len(args.sizes))
            elif len(vals) != len(args.sizes):
                p.error(f"--{name.replace('_', '-')}: one value or one per "
                        f'--sizes ({len(args.sizes)}), got {vals}')
    if args.coco_images < 0:
        p.error(f'--coco-images must be >= 0, got {args.coco_images}')
    if args.check_images is not None and args.check_images < 0:
        p.error(f'--check-images must be >= 0, got {args.check_images}')
    if args.threads is None:
        torch.set_num_threads(os.cpu_count() or 1)
        args.threads = [1, torch.get_num_threads()]
    args.threads = list(dict.fromkeys(args.threads))  # unique, in order
    args.sizes = [s for s in dict.fromkeys(args.sizes or [])
                  if s != args.boxes]  # the main load has --boxes
    return args


def total_boxes(load) -> int:
    return sum(len(b) for bl, _, _ in load for b in bl)


def make_load(images: int, members: int, boxes: int, classes: int,
              objects: int, seed: int) -> List[Tuple[list, list, list]]:
    """Seeded COCO-like detections, ``[(boxes_list, scores_list,
    labels_list)]`` per image (NumPy float64 boxes/scores, int64 labels).

    Each image has 1..``objects`` true objects; every member outputs
    ``boxes`` jittered copies of them (its top-``boxes`` detections, like a
    COCO detector): high-score copies are tight, low-score ones loose; the
    label is the object's class with probability 0.6, else one of 5
    classes it is confused with. Statistics are close to data/coco_real's
    (about 30 vs 35 labels per image, mean (image, label) group of 17 boxes
    in both, heavy tail up to ~350 vs 463 boxes). Images are drawn one after
    the other, so a load's first ``n`` images are the ``n``-image load.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        k = int(rng.integers(1, objects + 1))
        ctr = rng.uniform(0.15, 0.85, (k, 2))
        wh = np.exp(rng.uniform(np.log(0.03), np.log(0.6), (k, 2)))
        cls = rng.integers(0, classes, k)
        confuse = rng.integers(0, classes, (k, 5))
        bl, sl, ll = [], [], []
        for _m in range(members):
            src = rng.integers(0, k, boxes)  # object of each detection
            sc = np.sort(rng.beta(1.2, 4.0, boxes))[::-1]
            jit = 0.03 + 0.4 * (1 - sc[:, None])  # relative jitter
            c = ctr[src] + rng.normal(0, 1, (boxes, 2)) * jit * wh[src]
            s = wh[src] * np.exp(rng.normal(0, 1, (boxes, 2)) * jit)
            b = np.concatenate([c - s / 2, c + s / 2], 1).clip(0, 1)
            lab = np.where(rng.random(boxes) < 0.6, cls[src],
                           confuse[src, rng.integers(0, 5, boxes)])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            bl.append(b[keep])
            sl.append(sc[keep].copy())
            ll.append(lab[keep].astype(np.int64))
        out.append((bl, sl, ll))
    return out


class PeakRSS:
    """Peak growth of this process' RSS (bytes) while in the block.

    Freed heap is first returned to the OS (``malloc_trim``) and RSS is
    sampled every millisecond by a thread, so this sees torch's CPU
    allocator, which tracemalloc does not.
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


def same(ref: Tuple, ours: Tuple, tol: float = 1e-5,
         by_score: bool = False) -> bool:
    """Equal boxes/scores/labels; order-insensitive within tied scores.

    ``by_score``: ``ours`` is in score-descending order (the packed API's),
    so ``ref`` is too, first (ensemble-boxes' NMS family returns its boxes
    label by label; the list API keeps that order, the packed one does not).
    """
    rb, rs, rl = (np.asarray(x, dtype=np.float64) for x in ref)
    if by_score:
        o = np.argsort(-rs, kind='stable')
        rb, rs, rl = rb[o], rs[o], rl[o]
    ob, os_, ol = (np.asarray(x.cpu() if torch.is_tensor(x) else x,
                              dtype=np.float64) for x in ours)
    if rb.shape != ob.shape:
        return False

    def close(p, q):
        return (np.abs(rb[p] - ob[q]).max(initial=0) < tol
                and np.abs(rs[p] - os_[q]).max(initial=0) < tol
                and (rl[p] == ol[q]).all())

    ar = np.arange(len(rs))
    if close(ar, ar):
        return True
    if np.abs(rs - os_).max(initial=0) >= tol:
        return False  # the score sequence (order included) must match
    kr = np.lexsort((rb[:, 1], rb[:, 0], rl, -np.round(rs, 6)))
    ko = np.lexsort((ob[:, 1], ob[:, 0], ol, -np.round(os_, 6)))
    return close(kr, ko)


def pack(load, device: str) -> mo.PackedDetections:
    dets = mo.listapi.pack_images(load).dets
    return dets._replace(labels=dets.labels.long()).to(device)


def to_device(load, device: str):
    """The list API's input on ``device`` (torch tensors on CUDA, so the
    work runs there)."""
    if device == 'cpu':
        return load
    return [([torch.as_tensor(b, device=device) for b in bl],
             [torch.as_tensor(s, device=device) for s in sl],
             [torch.as_tensor(lab, device=device) for lab in ll])
            for bl, sl, ll in load]


def per_image_numpy(out, num_images: int) -> List[Tuple]:
    """Per-image NumPy ``(boxes, scores, labels)`` of a list API result or a
    packed ``(boxes, scores, labels, images)`` result (NumPy, so the check
    workers never touch torch)."""
    if isinstance(out, tuple):  # packed
        b, s, lab, im = (x.cpu().numpy() for x in out)
        cuts = np.cumsum(np.bincount(im, minlength=num_images))[:-1]
        return list(zip(*(np.split(x, cuts) for x in (b, s, lab))))
    return [tuple(
        np.asarray(x.cpu() if torch.is_tensor(x) else x) for x in img)
            for img in out]


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


@contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def threads_label(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def time_mmens(fn: Callable, device: str, repeat: int,
               memory: str = '') -> Tuple[float, Optional[int], object]:
    """Best-of-``repeat`` seconds of ``fn()``, its peak memory (bytes) and
    its output. ``memory``: '' none; 'extra': one more, untimed call (the
    RSS sampler thread takes a little CPU); 'timed': during the timed calls
    (for calls of seconds, where one more would cost more than the sampler's
    reads of /proc every millisecond)."""
    best, out, mem = float('inf'), None, None
    for _ in range(repeat):
        out = None  # the previous output is freed before the next call
        with peak_memory(device, memory == 'timed') as m:
            _sync(device)
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        mem = max(mem or 0, m.peak) if m.peak is not None else mem
    if memory == 'extra':
        with peak_memory(device, True) as m:
            fn()
        mem = m.peak
    return best, mem, out


class _NoMemory:
    peak = None


@contextmanager
def peak_memory(device: str, on: bool):
    """Peak memory of the block in ``.peak`` (None when not ``on``): CUDA
    max allocated, or the RSS growth on CPU."""
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


def time_reference(ref_fn: Callable, load, n_ref: int,
                   memory: bool) -> Tuple[list, float, int, int]:
    """ensemble-boxes per image on the first ``n_ref`` images: outputs,
    s/image, peak tracemalloc and RSS (memory measured on a second pass over
    <= 20 images: tracemalloc slows the timed pass down)."""
    t0 = time.perf_counter()
    ref = [ref_fn(img) for img in load[:n_ref]]
    t_ref = (time.perf_counter() - t0) / max(n_ref, 1)
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


def measure(name: str, load, boxes: int, n_ref: int, args, repeat: int,
            memory_threads: Sequence[int],
            memory: str = 'extra',
            ref_memory: bool = False) -> Tuple[Case, list, Dict[str, list]]:
    """Times ``name`` on ``load`` (``boxes`` per member per image):
    ensemble-boxes on the first ``n_ref`` images, mmens' two APIs at every
    ``args.threads`` (peak memory, see :func:`time_mmens`, at
    ``memory_threads``). Returns the case, ensemble-boxes' outputs and
    mmens' per-image outputs by "<api>, <threads>"."""
    fu = fusion(name)
    case = Case(name, boxes, len(load), n_ref, total_boxes=total_boxes(load))
    ref, t_ref, case.ref_mem, case.ref_rss = time_reference(
        fu.reference, load, n_ref, ref_memory)
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
                secs, mem, out = time_mmens(
                    fn, dev, repeat, memory if t in memory_threads else '')
                case.secs[api, t] = secs
                if mem is not None:
                    case.mem[api, t] = mem
                # "packed, ..." keys: compared in score order, see same()
                outputs[f'{api}, {threads_label(t)}'] = per_image_numpy(
                    out, len(load))
                del out
    return case, ref, outputs


def _check_range(ref_fn: Callable, load, outputs: Dict[str, list], lo: int,
                 hi: int) -> Tuple[int, Dict[str, List[int]]]:
    """Images ``lo..hi-1``: run ensemble-boxes, compare every output set."""
    bad = {k: [] for k in outputs}
    for i in range(lo, hi):
        r = ref_fn(load[i])
        for k, o in outputs.items():
            if not same(r, o[i], by_score=k.startswith('packed')):
                bad[k].append(i)
    return hi - lo, bad


def _check_worker(ref_fn: Callable, load, outputs: Dict[str, list], tasks,
                  results) -> None:
    """A forked check process: image ranges from ``tasks`` until None."""
    try:
        for lo, hi in iter(tasks.get, None):
            results.put(_check_range(ref_fn, load, outputs, lo, hi))
    except BaseException as e:  # reported, or the parent would wait forever
        results.put(RuntimeError(f'check worker: {e!r}'))


def _run_checks(ref_fn: Callable, load, outputs: Dict[str, list],
                chunks: List[Tuple[int, int]],
                workers: int) -> Iterator[Tuple[int, Dict[str, List[int]]]]:
    """:func:`_check_range` of every chunk, in ``workers`` forked processes
    (they share the load and the outputs without pickling them, and run
    NumPy/numba only, never torch), as they finish."""
    if workers <= 1:
        for lo, hi in chunks:
            yield _check_range(ref_fn, load, outputs, lo, hi)
        return
    ctx = mp.get_context('fork')
    tasks, results = ctx.Queue(), ctx.Queue()
    for c in chunks:
        tasks.put(c)
    for _ in range(workers):
        tasks.put(None)
    procs = [
        ctx.Process(target=_check_worker,
                    args=(ref_fn, load, outputs, tasks, results),
                    daemon=True) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        for _ in chunks:
            while True:
                try:
                    r = results.get(timeout=5)
                    break
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError('a check worker died')
            if isinstance(r, BaseException):
                raise r
            yield r
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


class Progress:
    """Progress lines with an ETA, at most every ``every`` seconds."""

    def __init__(self, what: str, total: int, every: float = 10.0):
        self.what, self.total, self.every = what, total, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            el = now - self.t0
            eta = el / self.done * (self.total - self.done)
            print(f'    {self.what}: {self.done:,}/{self.total:,} images, '
                  f'{el:.0f} s, ETA {eta:.0f} s', flush=True)


def check(case: Case, load, ref: list, outputs: Dict[str, list],
          args) -> None:
    """Compares every output set with ensemble-boxes on the first
    ``--check-images`` images (default all): ``ref`` holds the first
    images' reference outputs; ensemble-boxes runs, untimed and in
    ``--workers`` forked processes, on the rest."""
    n = len(load) if args.check_images is None else min(
        args.check_images, len(load))
    bad = {k: [] for k in outputs}
    for i, r in enumerate(ref[:n]):
        for k, o in outputs.items():
            if not same(r, o[i], by_score=k.startswith('packed')):
                bad[k].append(i)
    lo = min(len(ref), n)
    if lo < n:
        workers = min(args.workers, max(1, (n - lo) // 10))
        if 'fork' not in mp.get_all_start_methods():  # pragma: no cover
            workers = 1
        step = max(5, min(200, (n - lo) // (workers * 8) or 1))
        chunks = [(a, min(a + step, n)) for a in range(lo, n, step)]
        what = (f'checking {METHODS[case.method][1]} on images '
                f'{lo:,}..{n - 1:,}')
        print(f'    {what} (ensemble-boxes untimed, {workers} process'
              f"{'es' if workers > 1 else ''})", flush=True)
        prog = Progress(what, n - lo)
        for k, b in _run_checks(fusion(case.method).reference, load, outputs,
                                chunks, workers):
            prog.update(k)
            for key, v in b.items():
                bad[key] += v
        print(f'    checked in {time.perf_counter() - prog.t0:.0f} s',
              flush=True)
    case.checked = n
    case.bad = {k: sorted(v) for k, v in bad.items() if v}


def target_note(case: Case, ascii_: bool = True) -> str:
    """Issue 17's speed-up target of this method, with met/missed (main load,
    1 thread, list API), or ''."""
    target = TARGETS.get(case.method)
    if target is None or (1 not in case.threads()):
        return ''
    ok = 'met' if case.ratio('list', 1) >= target else 'missed'
    if ascii_:
        return f'target >= {target:g}: {ok}'
    return f'≥ {target:g}×: {ok}'


def print_case(case: Case, args, main: bool) -> None:
    mb = 2.0**20
    label = METHODS[case.method][1]
    eb = (f'all {case.images:,} images' if case.ref_images == case.images
          else f'timed on {case.ref_images:,} of {case.images:,} images, '
          'per-image time extrapolated')
    print(f'  {label:9s} ensemble-boxes {case.ref_ms:9.3f} ms/img ({eb})')
    for t in case.threads():
        cells = []
        for api in APIS:
            r = case.ratio(api, t)
            note = target_note(case) if (main and api == 'list'
                                         and t == 1) else ''
            cells.append(f'{api} {case.ms(api, t):8.4f} ms/img x{r:7.1f}' +
                         (f' ({note})' if note else ''))
        print(f'  {"":9s} mmens {threads_label(t):10s} ' + ' | '.join(cells))
    if case.mem:
        kind, mem = memory_summary(case, args)
        ref = (f'ensemble-boxes {case.ref_mem / mb:.2f} MiB tracemalloc, '
               f'{case.ref_rss / mb:.1f} MiB RSS growth (per-image loop) | '
               if case.ref_images else '')
        print(f'  {"":9s} peak memory: {ref}mmens {case.images:,} images at '
              f'once ({kind}) {mem}', flush=True)


def memory_summary(case: Case, args) -> Tuple[str, str]:
    """What the peak memory is and its figures per thread count (MiB)."""
    mb = 2.0**20
    kind = 'CUDA max allocated' if args.device == 'cuda' else 'RSS growth'
    mem = '; '.join(
        f'{threads_label(t)}: list {case.mem["list", t] / mb:.1f}, '
        f'packed {case.mem["packed", t] / mb:.1f} MiB'
        for t in case.threads() if ('list', t) in case.mem)
    return kind, mem


def print_check(case: Case) -> None:
    sets = ', '.join(f'{k}: {len(v)} differ (first {v[:5]})'
                     for k, v in case.bad.items())
    print(f'  {"":9s} outputs equal {case.equal:,}/{case.checked:,} images '
          f'(both APIs, every thread count){"; " + sets if sets else ""}',
          flush=True)


def print_coco(case: Case, args, main_case: Optional[Case]) -> None:
    label = METHODS[case.method][1]
    for t in case.threads():
        cells = []
        for api in APIS:
            s = case.secs[api, t]
            note = ''
            if t == 1:
                note = (f" (target <= {COCO_TARGET_S:g} s: "
                        f"{'met' if s <= COCO_TARGET_S else 'missed'})")
            cells.append(f'{api} {s:7.2f} s{note}')
        print(f'  {label:9s} mmens {threads_label(t):10s} ' +
              ' | '.join(cells))
        label = ''
    if main_case is not None:
        est = main_case.ref_ms * case.images / 1e3
        print(f'  {"":9s} ensemble-boxes would take ~{est:.1f} s '
              f'({main_case.ref_ms:.3f} ms/img of the main load x '
              f'{case.images:,})')
    if case.mem:
        kind, mem = memory_summary(case, args)
        print(f'  {"":9s} peak memory ({kind}, during the timed call) {mem}',
              flush=True)


def revision() -> str:
    """Short commit of the tree, and whether the code timed differs from
    it."""
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                             cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--',
                                'mmens', 'setup.py'], cwd=ROOT,
                               capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown commit'
    return f'commit {rev}' + (' + uncommitted changes to mmens/ or '
                              'setup.py' if dirty else '')


def command(argv: Optional[Sequence[str]]) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = 'python tools/analysis_tools/benchmark_fusion.py'
    return ' '.join([cmd] + [shlex.quote(a) for a in argv])


def markdown(cases: List[Case], coco: List[Case], args, argv,
             wall: float) -> str:
    """The results as Markdown tables (pasted into docs/benchmarks.md and
    the README speed table)."""
    mb = 2.0**20
    ts = args.threads
    lines = [
        f'Command: `{command(argv)}`' +
        (' (`make bench`)' if not (sys.argv[1:] if argv is None else argv)
         else ''),
        '',
        f'Generated COCO-like loads ({args.members} members, '
        f'{args.classes} classes, seed {args.seed}); ensemble-boxes '
        f'{eb_version()} one image at a time (NumPy, single-threaded) '
        f'against mmens batched over all images in one call '
        f'(list API, packing included; packed API: input already packed); '
        f'speed-up = ensemble-boxes ms/image / mmens list API ms/image; '
        f"issue 17's targets at 1 thread on the {args.boxes}-box load; "
        f'outputs compared with ensemble-boxes on the images shown. '
        f'{revision()}, torch {torch.__version__}, {cpu_name()}, device '
        f'{args.device}, {backend_note(args.device)}; load average '
        f'{args.load_avg} at the start, {load_average()} at the end (a busy '
        f'machine slows the all-threads runs most); wall time '
        f'{wall / 60:.1f} min.',
        '',
    ]
    head = ['method', 'boxes / member', 'images', 'ensemble-boxes ms / image']
    for t in ts:
        head += [f'mmens {threads_label(t)} ms / image',
                 f'speed-up, {threads_label(t)}']
    head += ['packed API ms / image (' + ' / '.join(
        threads_label(t) for t in ts) + ')', 'outputs equal',
        f'peak memory, mmens {threads_label(ts[0])} (list / packed)']
    lines += ['| ' + ' | '.join(head) + ' |',
              '|---|' + '---:|' * (len(head) - 1)]
    for c in sorted(cases, key=lambda c: (list(METHODS).index(c.method),
                                          c.boxes)):
        main = c.boxes == args.boxes
        imgs = f'{c.images:,}' + ('' if c.ref_images == c.images else
                                  f' (ensemble-boxes timed on '
                                  f'{c.ref_images:,})')
        row = [METHODS[c.method][1], f'{c.boxes:,}', imgs,
               f'{c.ref_ms:.3f}']
        for t in ts:
            note = target_note(c, ascii_=False) if main and t == 1 else ''
            row += [f'{c.ms("list", t):.3f}',
                    f'{c.ratio("list", t):.1f}×' +
                    (f' ({note})' if note else '')]
        row += [' / '.join(f'{c.ms("packed", t):.3f}' for t in ts),
                f'{c.equal:,}/{c.checked:,}']
        row.append(f'{c.mem["list", ts[0]] / mb:.0f} / '
                   f'{c.mem["packed", ts[0]] / mb:.0f} MiB'
                   if ('list', ts[0]) in c.mem else '')
        lines.append('| ' + ' | '.join(row) + ' |')
    if coco:
        c0 = coco[0]
        lines += [
            '', f'COCO-val-sized load, fused in one call: {c0.images:,} '
            f'images × {args.members} members × ≤ {args.boxes} boxes '
            f'({c0.total_boxes:,} boxes); its first '
            f'{min(args.images, c0.images):,} images are the load above.', ''
        ]
        head = ['method']
        for api in APIS:
            head += [f'{api} API, {threads_label(t)}, s' for t in ts]
        head += ['target (1 thread, list API)',
                 'ensemble-boxes, extrapolated, s', 'outputs equal',
                 f'peak memory, mmens {threads_label(ts[0])} (list / packed)']
        lines += ['| ' + ' | '.join(head) + ' |',
                  '|---|' + '---:|' * (len(head) - 1)]
        main_ref = {c.method: c.ref_ms for c in cases if c.boxes == args.boxes}
        for c in coco:
            row = [METHODS[c.method][1]]
            row += [f'{c.secs[api, t]:.2f}' for api in APIS for t in ts]
            if ('list', 1) in c.secs:
                s = c.secs['list', 1]
                row.append(f"≤ {COCO_TARGET_S:g} s: "
                           f"{'met' if s <= COCO_TARGET_S else 'missed'}")
            else:
                row.append('')
            ref = main_ref.get(c.method)
            row.append(f'{ref * c.images / 1e3:.1f}' if ref else '')
            row.append(f'{c.equal:,}/{c.checked:,}')
            row.append(f'{c.mem["list", ts[0]] / mb:.0f} / '
                       f'{c.mem["packed", ts[0]] / mb:.0f} MiB'
                       if ('list', ts[0]) in c.mem else '')
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def eb_version() -> str:
    try:
        from importlib.metadata import version
        return version('ensemble-boxes')
    except Exception:  # pragma: no cover (not installed as a distribution)
        return '?'


def load_average() -> str:
    try:
        return ' '.join(f'{x:.1f}' for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return '?'


def cpu_name() -> str:
    name = ''
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                    break
    except OSError:  # pragma: no cover (not Linux)
        pass
    return f'{name or "CPU"} × {os.cpu_count()} cores'


def sweep(args) -> None:
    t = args.threads[0]
    print(f'\nsweep (ms per image; mmens packed at {threads_label(t)}, '
          'ensemble-boxes on 20 images)')
    print(f"{'method':9s} {'members':>7s} {'boxes':>5s} {'mmens':>8s} "
          f"{'e-boxes':>8s} {'ratio':>7s}")
    a = argparse.Namespace(**{**vars(args), 'threads': [t]})
    for name in args.methods:
        for members, boxes in [(2, 100), (5, 100), (10, 100), (20, 100),
                               (5, 25), (5, 50), (5, 200), (5, 400)]:
            load = make_load(100, members, boxes, args.classes, args.objects,
                             args.seed)
            r = measure(name, load, boxes, 20, a, 1, ())[0]
            print(f'{name:9s} {members:7d} {boxes:5d} '
                  f'{r.ms("packed", t):8.3f} {r.ref_ms:8.3f} '
                  f'{r.ratio("packed", t):7.1f}', flush=True)


def main(argv=None) -> None:
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda but CUDA is not available')
    select_backend(args.backend)
    warnings.simplefilter('ignore')
    args.load_avg = load_average()
    n_big = max(args.images, args.coco_images)
    print(f'generating {n_big:,} images x {args.members} members x '
          f'{args.boxes} boxes (seed {args.seed}) ...', flush=True)
    big = make_load(n_big, args.members, args.boxes, args.classes,
                    args.objects, args.seed)
    load = big[:args.images]
    nb = total_boxes(load)
    print(f'main load: {args.images:,} images x {args.members} members x '
          f'<={args.boxes} boxes ({nb:,} boxes), {args.classes} classes, '
          f'seed {args.seed}; device {args.device}; mmens at torch threads '
          f'{args.threads} (os.cpu_count() {os.cpu_count()}); torch '
          f'{torch.__version__}, numpy {np.__version__}, ensemble-boxes '
          f'{eb_version()}; {revision()}; {backend_note(args.device)}; '
          f'load average {args.load_avg} (a busy machine slows the '
          'all-threads runs most)', flush=True)
    for name in args.methods:  # warm up (numba jit, torch kernels)
        fu = fusion(name)
        fu.batch(load[:2])
        fu.reference(load[0])

    print(f'\n== main load: {args.images:,} images, {args.boxes} boxes/member'
          f'; times per image, x = speed-up over ensemble-boxes; best of '
          f'{args.repeat} ==', flush=True)
    cases, refs = [], {}
    for name in args.methods:
        case, ref, outs = measure(name, load, args.boxes, len(load), args,
                                  args.repeat, args.threads, ref_memory=True)
        print_case(case, args, main=True)
        check(case, load, ref, outs, args)
        print_check(case)
        refs[name] = ref  # the COCO-sized load starts with these images
        cases.append(case)
        del outs

    for size, n_img, n_ref in zip(args.sizes, args.size_images,
                                  args.ref_images):
        n_ref = min(n_ref, n_img)
        print(f'\n== {size:,} boxes/member: {n_img:,} images (one run); '
              f'ensemble-boxes timed on the first {n_ref:,}, per-image time '
              f'extrapolated ==', flush=True)
        sl = make_load(n_img, args.members, size, args.classes, args.objects,
                       args.seed)
        for name in args.methods:
            case, ref, outs = measure(name, sl, size, n_ref, args, 1, ())
            print_case(case, args, main=False)
            check(case, sl, ref, outs, args)
            print_check(case)
            cases.append(case)
            del outs, ref
        del sl

    coco = []
    if args.coco_images:
        big = big[:args.coco_images]
        print(f'\n== COCO-val-sized load: {len(big):,} images x '
              f'{args.members} members x <={args.boxes} boxes '
              f'({total_boxes(big):,} boxes) in one call (one run; peak '
              f'memory during the {threads_label(args.threads[0])} calls); '
              f'outputs compared on the first {min(args.images, len(big)):,} '
              "images with the main load's ensemble-boxes outputs ==",
              flush=True)
        main_cases = {c.method: c for c in cases if c.boxes == args.boxes}
        for name in args.methods:
            case, _, outs = measure(name, big, args.boxes, 0, args, 1,
                                    args.threads[:1], memory='timed')
            print_coco(case, args, main_cases.get(name))
            check(case, big, refs.pop(name), outs, args)
            print_check(case)
            coco.append(case)
            del outs
    if args.sweep:
        sweep(args)

    wall = time.perf_counter() - t_start
    print('\n== Markdown ==\n')
    print(markdown(cases, coco, args, argv, wall))
    bad = sum(c.checked - c.equal for c in cases + coco)
    print(f'\nwall time {wall:.0f} s; outputs differ on {bad} images'
          if bad else f'\nwall time {wall:.0f} s; all outputs equal')


if __name__ == '__main__':
    main()
