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
* ends with Markdown tables for docs/benchmarks.md and the README, with the
  command that produced them.

The parts live in ``benchmark/``, one idea each: the fusion functions and
backend (``methods``), the loads (``loads``), timing and memory (``timing``),
the output check (``check``) and the printed report (``report``); this file is
the command line.

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
import os
import time
import warnings

import numpy as np
import torch

from benchmark.check import check
from benchmark.loads import make_load, total_boxes
from benchmark.methods import METHODS, backend_note, fusion, select_backend
from benchmark.report import (eb_version, load_average, markdown, print_case, print_check,
                              print_coco, revision)
from benchmark.timing import CLOCKS, measure, set_clock, threads_label


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=['wbf', 'nms', 'soft_nms'],
                   choices=sorted(METHODS))
    p.add_argument('--images', type=int, default=500,
                   help='images of the main load (ensemble-boxes timed on all)')
    p.add_argument('--members', type=int, default=5)
    p.add_argument('--boxes', type=int, default=100,
                   help='boxes per member per image of the main and the COCO-sized loads')
    p.add_argument('--classes', type=int, default=80)
    p.add_argument('--objects', type=int, default=8,
                   help='max true objects per image (uniform 1..N)')
    p.add_argument('--sizes', type=int, nargs='*', default=[300, 1000],
                   help='further boxes per member to time (none: skip)')
    p.add_argument('--size-images', type=int, nargs='+', default=[100, 20],
                   help='images at each of --sizes (one value: all sizes); fewer at 1,000 '
                   'boxes keep the pure-torch run short')
    p.add_argument('--ref-images', type=int, nargs='+', default=[20, 5],
                   help='ensemble-boxes timed on the first N images at each of --sizes '
                   '(per-image time extrapolated; the rest is still checked, untimed)')
    p.add_argument('--coco-images', type=int, default=5000,
                   help='COCO-val-sized load fused in one call (0: skip)')
    p.add_argument('--check-images', type=int, default=None,
                   help='compare outputs on the first N images of each load only '
                   '(default: every image)')
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                   help='processes running ensemble-boxes, untimed, for the output check '
                   'of the images it was not timed on')
    p.add_argument('--threads', type=int, nargs='+', default=None,
                   help='torch thread counts to time mmens at (default: 1 and all, i.e. '
                   'os.cpu_count(); ensemble-boxes is single-threaded NumPy)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--backend', default=None, choices=['auto', 'cpp', 'torch'],
                   help='mmens.ops fusion backend (default: as set, i.e. '
                   'MMENS_OPS_BACKEND or auto)')
    p.add_argument('--repeat', type=int, default=3,
                   help='main load: best of N mmens runs (other loads: one run, their '
                   'calls take seconds)')
    p.add_argument('--clock', default='wall', choices=sorted(CLOCKS),
                   help="what the times are: 'wall', or 'cpu', the process' CPU time, "
                   'which a busy machine inflates far less (1 thread only: it sums threads)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sweep', action='store_true',
                   help='also time members x boxes grids (mmens packed at the first '
                   '--threads, ensemble-boxes on 20 images)')
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, checked (a wrong value: argparse's usage and one line)."""
    p = _parser()
    args = p.parse_args(argv)
    for name in ('images', 'members', 'boxes', 'classes', 'objects', 'repeat', 'workers'):
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
                p.error(f"--{name.replace('_', '-')}: one value or one per --sizes "
                        f'({len(args.sizes)}), got {vals}')
    for name in ('coco_images', 'check_images'):
        if (getattr(args, name) or 0) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available')
    if args.threads is None:
        torch.set_num_threads(os.cpu_count() or 1)
        args.threads = [1, torch.get_num_threads()]
    args.threads = list(dict.fromkeys(args.threads))  # unique, in order
    if args.clock == 'cpu' and (args.device != 'cpu' or args.threads != [1]):
        p.error('--clock cpu: --device cpu and --threads 1 only (CPU time sums the threads)')
    args.sizes = [s for s in dict.fromkeys(args.sizes or [])
                  if s != args.boxes]  # the main load has --boxes
    return args


def sweep(args) -> None:
    """How the time per image grows with members and boxes (``--sweep``)."""
    t = args.threads[0]
    print(f'\nsweep (ms per image; mmens packed at {threads_label(t)}, '
          'ensemble-boxes on 20 images)')
    print(f"{'method':9s} {'members':>7s} {'boxes':>5s} {'mmens':>8s} {'e-boxes':>8s} "
          f"{'ratio':>7s}")
    a = argparse.Namespace(**{**vars(args), 'threads': [t]})
    for name in args.methods:
        for members, boxes in [(2, 100), (5, 100), (10, 100), (20, 100), (5, 25), (5, 50),
                               (5, 200), (5, 400)]:
            load = make_load(100, members, boxes, args.classes, args.objects, args.seed)
            r = measure(name, load, boxes, 20, a, 1, ())[0]
            print(f'{name:9s} {members:7d} {boxes:5d} {r.ms("packed", t):8.3f} '
                  f'{r.ref_ms:8.3f} {r.ratio("packed", t):7.1f}', flush=True)


def run_main_load(args, load) -> tuple:
    """Every method on the main load, ensemble-boxes timed on every image. Returns the
    cases and ensemble-boxes' outputs by method (the COCO-sized load starts with these
    images)."""
    print(f'\n== main load: {args.images:,} images, {args.boxes} boxes/member; times per '
          f'image, x = speed-up over ensemble-boxes; best of {args.repeat} ==', flush=True)
    cases, refs = [], {}
    for name in args.methods:
        case, refs[name], outs = measure(name, load, args.boxes, len(load), args,
                                         args.repeat, args.threads, ref_memory=True)
        print_case(case, args)
        check(case, load, refs[name], outs, args)
        print_check(case)
        cases.append(case)
        del outs
    return cases, refs


def run_sizes(args) -> list:
    """Every method at each of ``--sizes`` boxes per member, on fewer images."""
    cases = []
    for size, n_img, n_ref in zip(args.sizes, args.size_images, args.ref_images):
        n_ref = min(n_ref, n_img)
        print(f'\n== {size:,} boxes/member: {n_img:,} images (one run); ensemble-boxes '
              f'timed on the first {n_ref:,}, per-image time extrapolated ==', flush=True)
        sl = make_load(n_img, args.members, size, args.classes, args.objects, args.seed)
        for name in args.methods:
            case, ref, outs = measure(name, sl, size, n_ref, args, 1, ())
            print_case(case, args)
            check(case, sl, ref, outs, args)
            print_check(case)
            cases.append(case)
            del outs, ref
    return cases


def run_coco(args, big, main_cases: list, refs: dict) -> list:
    """Every method on the COCO-val-sized load in one call, checked against the main
    load's ensemble-boxes outputs on its first images."""
    print(f'\n== COCO-val-sized load: {len(big):,} images x {args.members} members x '
          f'<={args.boxes} boxes ({total_boxes(big):,} boxes) in one call (one run; peak '
          f'memory during the {threads_label(args.threads[0])} calls); outputs compared '
          f'on the first {min(args.images, len(big)):,} images with the main load\'s '
          'ensemble-boxes outputs ==', flush=True)
    by_method = {c.method: c for c in main_cases}
    coco = []
    for name in args.methods:
        case, _, outs = measure(name, big, args.boxes, 0, args, 1, args.threads[:1],
                                memory='timed')
        print_coco(case, args, by_method.get(name))
        check(case, big, refs.pop(name), outs, args)
        print_check(case)
        coco.append(case)
        del outs
    return coco


def main(argv=None) -> None:
    t_start = time.perf_counter()
    args = parse_args(argv)
    select_backend(args.backend)
    set_clock(args.clock)
    warnings.simplefilter('ignore')
    args.load_avg = load_average()
    n_big = max(args.images, args.coco_images)
    print(f'generating {n_big:,} images x {args.members} members x {args.boxes} boxes '
          f'(seed {args.seed}) ...', flush=True)
    big = make_load(n_big, args.members, args.boxes, args.classes, args.objects, args.seed)
    load = big[:args.images]
    print(f'main load: {args.images:,} images x {args.members} members x <={args.boxes} '
          f'boxes ({total_boxes(load):,} boxes), {args.classes} classes, seed {args.seed}; '
          f'device {args.device}; mmens at torch threads {args.threads} (os.cpu_count() '
          f'{os.cpu_count()}); torch {torch.__version__}, numpy {np.__version__}, '
          f'ensemble-boxes {eb_version()}; {revision()}; {backend_note(args.device)}; '
          f'load average {args.load_avg} (a busy machine slows the all-threads runs most)',
          flush=True)
    for name in args.methods:  # warm up (numba jit, torch kernels)
        fu = fusion(name)
        fu.batch(load[:2])
        fu.reference(load[0])
    main_cases, refs = run_main_load(args, load)
    cases = main_cases + run_sizes(args)
    coco = run_coco(args, big[:args.coco_images], main_cases, refs) if args.coco_images else []
    if args.sweep:
        sweep(args)
    wall = time.perf_counter() - t_start
    print('\n== Markdown ==\n')
    print(markdown(cases, coco, args, argv, wall))
    bad = sum(c.checked - c.equal for c in cases + coco)
    print(f'\nwall time {wall:.0f} s; outputs differ on {bad} images' if bad
          else f'\nwall time {wall:.0f} s; all outputs equal')


if __name__ == '__main__':
    main()
