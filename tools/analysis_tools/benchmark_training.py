"""Training throughput of the ensemble on a seeded COCO-sized generated load.

For each number of members N, on batches of generated images (N members x 100 boxes x 80
classes per image, see :func:`mmens.testing.synthetic_batch`), times in images per second:
the matching into clusters Ŷ, a fixed WBF, and a learned head's forward + backward (one
optimiser step), and reports peak memory. Each N runs in a fresh process so that the peak
resident memory is its own. COCO train2017 has 118,287 images: the epoch time is derived.

    python tools/analysis_tools/benchmark_training.py --members 3 5 10 20
"""
import argparse
import json
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COCO_TRAIN_IMAGES = 118287


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='training throughput on a generated load')
    p.add_argument('--members', type=int, nargs='+', default=[3, 5, 10, 20])
    p.add_argument('--boxes', type=int, default=100, help='boxes per member per image')
    p.add_argument('--batch', type=int, default=32, help='images per batch')
    p.add_argument('--iters', type=int, default=4, help='timed batches per measurement')
    p.add_argument('--theta-mode', default='conditional')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--memory-gb', type=float, default=24.0,
                   help='report the largest batch whose training step fits in this memory')
    p.add_argument('--one', type=int, help=argparse.SUPPRESS)  # worker: one N, JSON out
    return p.parse_args(argv)


def measure(n: int, args) -> dict:
    import torch
    import mmens  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData
    from mmdet.structures import DetDataSample
    from mmens.ops import FUSION_METHODS, PackedDetections
    from mmens.testing import synthetic_batch
    torch.set_num_threads(args.threads)
    init_default_scope('mmdet')
    dev = args.device
    model = MODELS.build(dict(type='EnsembleDetector', members=[f'm{i}' for i in range(n)],
                              head=dict(type='LearnedFusionHead', theta_mode=args.theta_mode)))
    model = model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = []
    for s in range(args.iters + 1):
        packed, gt = synthetic_batch(args.batch, n, args.boxes, seed=s, device=dev)
        samples = []
        for b in range(args.batch):
            ds = DetDataSample(metainfo=dict(img_shape=(480, 640)))
            sel = gt['images'] == b
            ds.gt_instances = InstanceData(bboxes=gt['bboxes'][sel], labels=gt['labels'][sel])
            samples.append(ds)
        batches.append((packed, samples))

    def sync():
        if dev.startswith('cuda'):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        fn(*batches[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for packed, samples in batches[1:]:
            fn(packed, samples)
        sync()
        return args.iters * args.batch / (time.perf_counter() - t0)

    def wbf(packed, _):
        FUSION_METHODS['wbf'](PackedDetections.from_batch_inputs(packed, n))

    def step(packed, samples):
        losses = model.loss(packed, samples)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    out = dict(members=n, boxes_per_image=n * args.boxes, batch=args.batch,
               match_img_s=timed(lambda p, s: model.extract_feat(p)),
               wbf_img_s=timed(wbf), train_step_img_s=timed(step))
    out['epoch_coco_minutes'] = COCO_TRAIN_IMAGES / out['train_step_img_s'] / 60
    if dev.startswith('cuda'):
        out['peak_mem_mb'] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out['peak_mem_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args)))
        return
    def worker(n: int, batch: int) -> dict:
        cmd = [sys.executable, __file__, '--one', str(n), '--boxes', str(args.boxes),
               '--batch', str(batch), '--iters', str(args.iters), '--theta-mode',
               args.theta_mode, '--device', args.device, '--threads', str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = []
    for n in args.members:
        rows.append(worker(n, args.batch))
        r = rows[-1]
        print(f"N={n:3d}: {r['boxes_per_image']:5d} boxes/img | matching "
              f"{r['match_img_s']:8.1f} img/s | WBF {r['wbf_img_s']:8.1f} img/s | "
              f"learned train step {r['train_step_img_s']:7.1f} img/s (COCO epoch "
              f"{r['epoch_coco_minutes']:.0f} min) | peak memory {r['peak_mem_mb']:.0f} MB",
              flush=True)
    print(f'device {args.device}, {args.threads} threads, batch {args.batch} images, '
          f'{args.boxes} boxes per member, theta_mode {args.theta_mode}')
    # memory against batch size at the largest N: measured at two batch sizes, then the
    # largest batch within --memory-gb by linear extrapolation (stated as such)
    n = max(args.members)
    big = worker(n, 4 * args.batch)
    small = [r for r in rows if r['members'] == n][0]
    slope = (big['peak_mem_mb'] - small['peak_mem_mb']) / (3 * args.batch)  # MB per image
    base = small['peak_mem_mb'] - slope * args.batch
    print(f"N={n}: peak memory {small['peak_mem_mb']:.0f} MB at batch {args.batch}, "
          f"{big['peak_mem_mb']:.0f} MB at batch {4 * args.batch} -> {slope:.1f} MB per "
          f'image ({n * args.boxes} boxes) + {base:.0f} MB')
    if slope > 0:
        fit = int((args.memory_gb * 1024 - base) / slope)
        print(f'largest training batch within {args.memory_gb:g} GB (linear extrapolation, '
              f'not measured at that size): about {fit} images of {n * args.boxes} boxes, '
              f'{fit * n * args.boxes / 1e6:.1f} M boxes per step')


if __name__ == '__main__':
    main()
