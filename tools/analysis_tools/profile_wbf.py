"""Where mmens' pure-torch batched WBF spends its time, on ``benchmark_fusion.py``'s load.

The pure-torch path is the one CUDA tensors run (on CPU the compiled kernel runs instead;
``benchmark_fusion.py`` times it). Prints, for one call of ``weighted_boxes_fusion_packed`` over all images:

* the time in the greedy clustering loop (:func:`mmens.ops.greedy.greedy_cluster`) and in
  everything else (validation, grouping, sorting, scores, outputs);
* the loop's steps (boxes of the largest (image, label) group) and the number of
  box-cluster IoU evaluations any exact greedy WBF needs: each box is compared with every
  cluster already open in its group (``sum_boxes clusters_before``), and the evaluations the
  batched loop makes (padded to the widest group of each step);
* how many of those evaluations an exact spatial split of the groups would save
  (boxes that can never meet: with IoU > t, the x and y intervals shrunk by t/2 of their
  length on each side must overlap, and a fused box is a convex combination of its boxes);
* with ``--compile``, the cost per pair of the matching kernel (IoU of new boxes with
  candidate clusters, then the best one), eager against ``torch.compile``.

Example::

    python tools/analysis_tools/profile_wbf.py --images 500 --compile
"""
import argparse
import time

import torch

import mmens.ops as mo
from benchmark.loads import make_load, pack
from mmens.ops import clustering, greedy, kernel
from mmens.utils import run_cli


def segment_cummax_before(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per position, ``max(values[earlier positions of the same group]) + 1`` (0 at a group
    start); ``group`` non-decreasing. Tensor[K] long."""
    off = group * (int(values.max()) + 2) if values.numel() else group
    run = torch.cummax(values + off, 0)[0] - off  # [K] max so far, own group
    before = torch.zeros_like(values)
    same = group[1:] == group[:-1]
    before[1:] = torch.where(same, run[:-1] + 1, torch.zeros_like(run[:-1]))
    return before


def split_groups(boxes: torch.Tensor, group: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Sub-groups of ``group`` whose boxes can never reach IoU > ``iou_thr`` across
    sub-groups (connected components of shrunk x, then y intervals). Tensor[K] long."""
    s = iou_thr / 2 - 1e-6  # conservative for rounding
    for lo, hi in ((0, 2), (1, 3)):
        w = boxes[:, hi] - boxes[:, lo]
        a, b = boxes[:, lo] + s * w, boxes[:, hi] - s * w  # [K]
        key = group.double() * 4 + a  # boxes are normalised: groups do not mix
        o = torch.argsort(key)
        top = torch.cummax(group[o].double() * 4 + b[o], 0)[0]  # [K] reach so far
        new = torch.ones_like(o, dtype=torch.bool)
        new[1:] = (key[o][1:] > top[:-1]) | (group[o][1:] != group[o][:-1])
        comp = torch.empty_like(o)
        comp[o] = torch.cumsum(new, 0) - 1
        group = comp
    return group


def pair_kernel(cand: torch.Tensor, nb: torch.Tensor):
    """IoU of ``nb [A, 5]`` (box, area) with ``cand [A, W, 5]``, then the best cluster: the
    operations of one :func:`~mmens.ops.greedy.greedy_cluster` step, out of the loop."""
    lo = torch.maximum(cand[..., :2], nb[:, None, :2])
    hi = torch.minimum(cand[..., 2:4], nb[:, None, 2:4])
    inter = (hi - lo).clamp(min=0).prod(-1)
    return (inter / (cand[..., 4] + nb[:, 4:5] - inter)).max(1)


def time_kernel(fn, a: int, w: int, repeat: int = 20) -> float:
    """Seconds per call on random float64 inputs of ``A = a`` boxes, ``W = w`` clusters."""
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(a, w, 5, dtype=torch.float64, generator=g)
    nb = torch.rand(a, 5, dtype=torch.float64, generator=g)
    fn(cand, nb)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(cand, nb)
    return (time.perf_counter() - t0) / repeat


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=500)
    p.add_argument('--members', type=int, default=5)
    p.add_argument('--boxes', type=int, default=100)
    p.add_argument('--classes', type=int, default=80)
    p.add_argument('--objects', type=int, default=8)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--iou-thr', type=float, default=0.55)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--compile', action='store_true',
                   help='also time the matching kernel under torch.compile (needs a C++ '
                   'compiler; the first call compiles)')
    args = p.parse_args(argv)
    for name in ('images', 'members', 'boxes', 'classes', 'objects', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    if not 0.0 <= args.iou_thr < 1.0:
        p.error(f'--iou-thr must be in [0, 1), got {args.iou_thr}')
    torch.set_num_threads(args.threads)
    load = make_load(args.images, args.members, args.boxes, args.classes, args.objects,
                        args.seed)
    packed = pack(load, 'cpu')
    seen, spent = {}, [0.0]
    orig = greedy.greedy_cluster

    def timed(lay, boxes, *a, **k):
        t0 = time.perf_counter()
        res = orig(lay, boxes, *a, **k)
        spent[0] += time.perf_counter() - t0
        seen.update(lay=lay, boxes=boxes, res=res)
        return res

    def run() -> tuple:
        spent[0] = 0.0
        t0 = time.perf_counter()
        mo.weighted_boxes_fusion_packed(packed, iou_thr=args.iou_thr)
        return time.perf_counter() - t0, spent[0]

    clustering.greedy_cluster = timed
    try:
        with kernel.backend('torch'):
            run()
            total, loop = min(run() for _ in range(3))  # the fastest call, and its loop time
    finally:
        clustering.greedy_cluster = orig
    lay, res, n = seen['lay'], seen['res'], args.images
    kk = res.slot - torch.repeat_interleave(lay.start, lay.size)  # [K] cluster in group
    exact = int(segment_cummax_before(kk, lay.group).sum())
    padded = sum(a * j for j, a in enumerate(lay.active))
    sub = split_groups(seen['boxes'], lay.group, args.iou_thr)
    sizes = torch.bincount(sub).double()
    print(f'load: {n} images x {args.members} members x <={args.boxes} boxes '
          f'({int(packed[0].shape[0])} boxes), seed {args.seed}; torch threads {args.threads}')
    print(f'WBF total {total * 1e3:.1f} ms ({total / n * 1e3:.3f} ms/img): greedy loop '
          f'{loop * 1e3:.1f} ms, everything else {(total - loop) * 1e3:.1f} ms')
    print(f'groups {lay.size.numel()}, largest {int(lay.size.max())} boxes = loop steps; '
          f'clusters {int(res.num_clusters.sum())}')
    print(f'box-cluster IoU evaluations: exact greedy needs {exact:,}; the batched loop '
          f'makes <= {padded:,}; loop time per needed pair {loop / max(exact, 1) * 1e9:.1f} ns')
    print(f'exact spatial split: {lay.size.numel()} -> {sizes.numel()} groups, '
          f'sum of size^2/2 {float((lay.size.double() ** 2).sum() / 2):,.0f} -> '
          f'{float((sizes ** 2).sum() / 2):,.0f}')
    if args.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(pair_kernel, dynamic=True)
        compiled(torch.rand(8, 3, 5, dtype=torch.float64), torch.rand(8, 5, dtype=torch.float64))
        first = time.perf_counter() - t0
        for a, w in ((5000, 50), (200, 100), (20, 20)):
            te, tc = time_kernel(pair_kernel, a, w), time_kernel(compiled, a, w)
            print(f'matching kernel A={a} W={w}: eager {te * 1e6:.0f} us '
                  f'({te / (a * w) * 1e9:.1f} ns/pair), torch.compile {tc * 1e6:.0f} us '
                  f'({tc / (a * w) * 1e9:.1f} ns/pair)')
        print(f'torch.compile: first call (compilation) {first:.1f} s')


if __name__ == '__main__':
    run_cli(main)
