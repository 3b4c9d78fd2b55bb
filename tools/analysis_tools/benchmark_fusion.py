"""Benchmark mmens' batched box fusion against ensemble-boxes.

Generates a seeded COCO-like load (each member outputs jittered copies of a
few "true" objects per image, tight for high scores and loose for low ones,
some with a confused label; statistics close to data/coco_real), then in one
run:

* times ensemble-boxes per image (NumPy, as it is used in practice),
* times mmens batched over all images through the list API
  (``*_batch``) and the packed tensor API (``*_packed``, input already on
  ``--device``),
* checks the outputs are equal (values within 1e-5; order-insensitive only
  where the reference order is arbitrary, i.e. tied scores),
* reports per-image times, speed ratios, torch threads and peak memory
  (tracemalloc for the NumPy reference; sampled RSS growth on CPU, since
  torch's CPU allocator is invisible to tracemalloc;
  ``torch.cuda.max_memory_allocated`` on CUDA).

``--sweep`` reports how the time per image grows with members and boxes.

Example::

    python tools/analysis_tools/benchmark_fusion.py --images 500 --methods wbf nms soft_nms
"""
import argparse
import ctypes
import os
import threading
import time
import tracemalloc
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import mmens.ops as mo

METHODS: Dict[str, Tuple[Callable, Callable, Callable, str]] = {
    'wbf': (lambda *a: __import__('ensemble_boxes').weighted_boxes_fusion(*a),
            mo.weighted_boxes_fusion_batch, mo.weighted_boxes_fusion_packed,
            'weighted_boxes_fusion'),
    'nms': (lambda *a: __import__('ensemble_boxes').nms(*a), mo.nms_batch,
            mo.nms_packed, 'nms'),
    'soft_nms': (lambda *a: __import__('ensemble_boxes').soft_nms(*a),
                 mo.soft_nms_batch, mo.soft_nms_packed, 'soft_nms'),
    'nmw': (lambda *a: __import__('ensemble_boxes').non_maximum_weighted(*a),
            mo.non_maximum_weighted_batch, mo.non_maximum_weighted_packed,
            'non_maximum_weighted'),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--members', type=int, default=5)
    p.add_argument('--boxes',
                   type=int,
                   default=100,
                   help='boxes per member per image')
    p.add_argument('--images', type=int, default=500)
    p.add_argument('--classes', type=int, default=80)
    p.add_argument('--objects',
                   type=int,
                   default=8,
                   help='max true objects per image (uniform 1..N)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--methods',
                   nargs='+',
                   default=['wbf', 'nms', 'soft_nms'],
                   choices=sorted(METHODS))
    p.add_argument('--threads',
                   type=int,
                   default=1,
                   help='torch.set_num_threads (the loop is latency bound; '
                   'the NumPy reference is single-threaded)')
    p.add_argument('--ref-images',
                   type=int,
                   default=None,
                   help='time ensemble-boxes on the first N images only '
                   '(per-image time extrapolated); default all')
    p.add_argument('--repeat',
                   type=int,
                   default=3,
                   help='mmens timings: best of N runs')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sweep',
                   action='store_true',
                   help='also time members x boxes grids (mmens + reference)')
    return p.parse_args(argv)


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
    in both, heavy tail up to ~350 vs 463 boxes).
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


def same(ref: Tuple, ours: Tuple, tol: float = 1e-5) -> bool:
    """Equal boxes/scores/labels; order-insensitive within tied scores."""
    rb, rs, rl = (np.asarray(x, dtype=np.float64) for x in ref)
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
    kr = np.lexsort((rb[:, 1], rb[:, 0], rl, -np.round(rs, 6)))
    ko = np.lexsort((ob[:, 1], ob[:, 0], ol, -np.round(os_, 6)))
    return close(kr, ko)


def pack(load, device: str) -> mo.PackedDetections:
    dets = mo.listapi.pack_images(load).dets
    return dets._replace(labels=dets.labels.long()).to(device)


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def time_mmens(fn: Callable, device: str, repeat: int) -> Tuple[float, int]:
    """Best-of-``repeat`` seconds and peak memory (bytes) of ``fn()``."""
    best = float('inf')
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        fn()
        return best, torch.cuda.max_memory_allocated()
    with PeakRSS() as m:
        fn()
    return best, m.peak


def time_reference(ref_fn: Callable, load, n_ref: int) -> Tuple:
    """ensemble-boxes per image: outputs, s/image, peak tracemalloc and RSS
    (memory measured on a second pass over <= 20 images: tracemalloc slows
    the timed pass down)."""
    t0 = time.perf_counter()
    ref = [ref_fn(*[list(x) for x in img]) for img in load[:n_ref]]
    t_ref = (time.perf_counter() - t0) / max(n_ref, 1)
    with PeakRSS() as rss:
        tracemalloc.start()
        for img in load[:min(n_ref, 20)]:
            ref_fn(*[list(x) for x in img])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return ref, t_ref, peak, rss.peak


def run_method(name: str, load, args, quiet: bool = False) -> Dict:
    ref_fn, batch_fn, packed_fn, _ = METHODS[name]
    n_ref = len(load) if args.ref_images is None else min(
        args.ref_images, len(load))
    ref, t_ref, ref_mem, ref_rss = time_reference(ref_fn, load, n_ref)
    dev = args.device
    if dev == 'cuda':
        load_dev = [([torch.as_tensor(b, device=dev) for b in bl],
                     [torch.as_tensor(s, device=dev) for s in sl],
                     [torch.as_tensor(lab, device=dev) for lab in ll])
                    for bl, sl, ll in load]
    else:
        load_dev = load
    t_list, mem_list = time_mmens(lambda: batch_fn(load_dev), dev,
                                  args.repeat)
    packed = pack(load, dev)
    t_pack, mem_pack = time_mmens(lambda: packed_fn(packed), dev,
                                  args.repeat)
    ours = batch_fn(load_dev)
    n_same = sum(same(r, o) for r, o in zip(ref, ours[:n_ref]))
    n = len(load)
    res = dict(method=name, ref_ms=t_ref * 1e3, list_ms=t_list / n * 1e3,
               packed_ms=t_pack / n * 1e3, ratio_list=t_ref * n / t_list,
               ratio_packed=t_ref * n / t_pack, same=n_same, checked=n_ref,
               ref_mem=ref_mem, ref_rss=ref_rss, list_mem=mem_list,
               packed_mem=mem_pack, boxes=int(packed[0].shape[0]))
    if not quiet:
        mb = 2.0**20
        kind = 'CUDA max allocated' if dev == 'cuda' else 'RSS growth'
        print(f"{name:9s} ensemble-boxes {res['ref_ms']:8.3f} ms/img | "
              f"mmens list {res['list_ms']:7.4f} ms/img "
              f"(x{res['ratio_list']:6.1f}) | packed "
              f"{res['packed_ms']:7.4f} ms/img (x{res['ratio_packed']:6.1f}) "
              f'| outputs equal {n_same}/{n_ref} images')
        print(f'{"":9s} peak memory: ensemble-boxes {ref_mem / mb:.2f} MiB '
              f'tracemalloc, {ref_rss / mb:.1f} MiB RSS growth (per-image '
              f'loop) | mmens {n} images at once: list {mem_list / mb:.1f} '
              f'MiB, packed {mem_pack / mb:.1f} MiB ({kind})')
    return res


def sweep(args) -> None:
    print('\nsweep (ms per image; mmens packed, ensemble-boxes on 20 images)')
    print(f"{'method':9s} {'members':>7s} {'boxes':>5s} {'mmens':>8s} "
          f"{'e-boxes':>8s} {'ratio':>7s}")
    for name in args.methods:
        for members, boxes in [(2, 100), (5, 100), (10, 100), (20, 100),
                               (5, 25), (5, 50), (5, 200), (5, 400)]:
            load = make_load(100, members, boxes, args.classes, args.objects,
                             args.seed)
            a = argparse.Namespace(**{
                **vars(args), 'ref_images': 20,
                'repeat': 1
            })
            r = run_method(name, load, a, quiet=True)
            print(f'{name:9s} {members:7d} {boxes:5d} {r["packed_ms"]:8.3f} '
                  f'{r["ref_ms"]:8.3f} {r["ref_ms"] / r["packed_ms"]:7.1f}')


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda but CUDA is not available')
    torch.set_num_threads(args.threads)
    warnings.simplefilter('ignore')
    load = make_load(args.images, args.members, args.boxes, args.classes,
                     args.objects, args.seed)
    nb = sum(len(b) for bl, _, _ in load for b in bl)
    print(f'load: {args.images} images x {args.members} members x '
          f'<={args.boxes} boxes ({nb} boxes), {args.classes} classes, '
          f'seed {args.seed}; device {args.device}; torch threads '
          f'{torch.get_num_threads()}; torch {torch.__version__}, numpy '
          f'{np.__version__}')
    for name in args.methods:  # warm up (numba jit, torch kernels)
        METHODS[name][1](load[:2])
        METHODS[name][0](*[list(x) for x in load[0]])
    for name in args.methods:
        run_method(name, load, args)
    if args.sweep:
        sweep(args)


if __name__ == '__main__':
    main()
