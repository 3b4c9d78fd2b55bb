"""mmens' outputs compared with ensemble-boxes', image by image, in forked workers."""
import multiprocessing as mp
import queue
import time
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch

from mmens.utils.progress import Progress

from .methods import METHODS, fusion
from .timing import Case


def same(ref: Tuple, ours: Tuple, tol: float = 1e-5, by_score: bool = False) -> bool:
    """Equal boxes/scores/labels; order-insensitive within tied scores.

    ``by_score``: ``ours`` is in score-descending order (the packed API's), so ``ref`` is
    too, first (ensemble-boxes' NMS family returns its boxes label by label; the list
    API keeps that order, the packed one does not).
    """
    rb, rs, rl = (np.asarray(x, dtype=np.float64) for x in ref)
    if by_score:
        o = np.argsort(-rs, kind='stable')
        rb, rs, rl = rb[o], rs[o], rl[o]
    ob, os_, ol = (np.asarray(x.cpu() if torch.is_tensor(x) else x, dtype=np.float64)
                   for x in ours)
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
    """:func:`_check_range` of every chunk, in ``workers`` forked processes (they share
    the load and the outputs without pickling them, and run NumPy/numba only, never
    torch), as they finish."""
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
    procs = [ctx.Process(target=_check_worker, args=(ref_fn, load, outputs, tasks, results),
                         daemon=True) for _ in range(workers)]
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


def check(case: Case, load, ref: list, outputs: Dict[str, list], args) -> None:
    """Compares every output set with ensemble-boxes on the first ``--check-images``
    images (default all): ``ref`` holds the first images' reference outputs;
    ensemble-boxes runs, untimed and in ``--workers`` forked processes, on the rest."""
    n = len(load) if args.check_images is None else min(args.check_images, len(load))
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
        what = f'checking {METHODS[case.method][1]} on images {lo:,}..{n - 1:,}'
        print(f'    {what} (ensemble-boxes untimed, {workers} process'
              f"{'es' if workers > 1 else ''})", flush=True)
        t0 = time.perf_counter()
        with Progress(f'{what} (images)', n - lo, every=10.0) as prog:
            for k, b in _run_checks(fusion(case.method).reference, load, outputs, chunks,
                                    workers):
                prog.step(n=k)
                for key, v in b.items():
                    bad[key] += v
        print(f'    checked in {time.perf_counter() - t0:.0f} s', flush=True)
    case.checked = n
    case.bad = {k: sorted(v) for k, v in bad.items() if v}
