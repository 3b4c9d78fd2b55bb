"""Fuse the COCO-results files of several detectors and score them with COCO AP.

Examples::

    python tools/analysis_tools/fuse_results.py --ann data/coco_real/annotations/val.json \\
        --preds data/coco_real/predictions/val/*.json --method wbf --out fused.json
    python tools/analysis_tools/fuse_results.py --ann GT.json --preds A.json B.json \\
        --method learned --checkpoint work_dirs/learned/epoch_1.pth

The checkpoint of ``--method learned|cel`` comes from ``tools/train.py`` or, without a
config, from ``tools/analysis_tools/fit_ensemble.py`` on a labelled split's files. A
checkpoint that would run code is refused with one line (``UnsafeCheckpointError``).

Files are any framework's COCO-results JSON (``image_id``, ``category_id``,
``bbox: [x, y, w, h]`` pixels, ``score``); members are named by file stem or ``--names``.

The last line splits the wall time: start-up (the imports, when run as a script),
annotations, read (decoding the member files), validate (checks and packing), fuse (the
``fused ... in`` seconds of ``model.fuse`` and the per-image top 100, plus slicing the
chunks and mapping to COCO ids), evaluate (without ``--no-eval``), write, and the total.
"""
import time

T_START = time.perf_counter()  # before the imports: they are part of the wall time

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os.path as osp  # noqa: E402

import mmens  # noqa: F401,E402  (registers the mmens modules)
from mmens.apis import (build_fixed_ensemble, fuse_batch_arrays, load_coco,  # noqa: E402
                        load_ensemble_checkpoint, load_member_batch, member_remap,
                        member_results)
from mmens.datasets.coco_results import write_results_json  # noqa: E402
from mmens.evaluation.coco_eval import arrays_to_results, coco_metrics  # noqa: E402
from mmens.utils import run_cli  # noqa: E402

T_IMPORTED = time.perf_counter()

FIXED = ('wbf', 'nms', 'soft_nms', 'nmw')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Fuse COCO-results files of several detectors')
    p.add_argument('--ann', required=True, help='COCO annotation file (images, categories)')
    p.add_argument('--preds', nargs='+', required=True, help='one COCO-results JSON per member')
    p.add_argument('--names', nargs='+', help='member names (default: file stems)')
    p.add_argument('--method', default='wbf', choices=FIXED + ('learned', 'cel'))
    p.add_argument('--weights', nargs='+', type=float, help='member weights (fixed rules)')
    p.add_argument('--iou-thr', type=float, help='IoU threshold (default: the method\'s)')
    p.add_argument('--skip-box-thr', type=float, help='drop boxes scoring below it')
    p.add_argument('--conf-type', help='WBF confidence: avg, max, box_and_model_avg, '
                   'absent_model_aware_avg')
    p.add_argument('--sigma', type=float, help='soft-NMS sigma')
    p.add_argument('--thresh', type=float, help='soft-NMS score threshold')
    p.add_argument('--checkpoint', help='trained ensemble (learned, cel)')
    p.add_argument('--k', type=int, help='cel: members per image')
    p.add_argument('--budget-seconds', type=float,
                   help='cel: member compute per image, in seconds (members.json costs)')
    p.add_argument('--config', help='override the config stored in the checkpoint')
    p.add_argument('--out', help='write the fused COCO-results JSON here')
    p.add_argument('--metrics-out', help='write the metrics as JSON here')
    p.add_argument('--repair', action='store_true',
                   help='repair bad entries (clip scores, drop invalid boxes) with counts')
    p.add_argument('--no-eval', action='store_true', help='fuse only (GT without labels)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--chunk', type=int, default=256, help='images fused per call')
    return p.parse_args(argv)


def main(argv=None) -> None:
    t_main = time.perf_counter()
    args = parse_args(argv)
    coco = load_coco(args.ann, annotations=not args.no_eval)  # --no-eval: images, categories
    t_ann = time.perf_counter() - t_main
    if args.method != 'cel' and (args.k is not None or args.budget_seconds is not None):
        raise ValueError(f'--k / --budget-seconds are for --method cel, not {args.method}')
    if args.method in FIXED:
        if args.checkpoint:
            raise ValueError(f'--checkpoint is for learned/cel methods, not {args.method}')
        names = args.names or [osp.splitext(osp.basename(f))[0] for f in args.preds]
        if args.weights is not None and len(args.weights) != len(args.preds):
            raise ValueError(f'--weights has {len(args.weights)} values for '
                             f'{len(args.preds)} prediction files')
        model = build_fixed_ensemble(
            names, args.method, weights=args.weights, iou_thr=args.iou_thr,
            skip_box_thr=args.skip_box_thr, conf_type=args.conf_type, sigma=args.sigma,
            thresh=args.thresh)
        cat_ids = None
    else:
        if not args.checkpoint:
            raise ValueError(f'--method {args.method} needs --checkpoint')
        model = load_ensemble_checkpoint(args.checkpoint, args.config, args.device)
        is_cel = hasattr(model, 'set_budget')
        if (args.method == 'cel') != is_cel:
            raise ValueError(f'--method {args.method} does not match the checkpoint '
                             f'({type(model).__name__})')
        if args.k is not None or args.budget_seconds is not None:
            model.set_budget(k=args.k, budget=args.budget_seconds)
        classes = (model.dataset_meta or {}).get('classes')
        by_name = {c['name']: c['id'] for c in coco.loadCats(coco.getCatIds())}
        unknown = [c for c in classes or [] if c not in by_name]
        if unknown:
            raise ValueError(f'the ensemble\'s classes {unknown[:5]} are not categories '
                             f'of {args.ann}')
        cat_ids = [by_name[c] for c in classes] if classes else None
    batch = load_member_batch(coco, args.preds, args.names, cat_ids=cat_ids,
                              repair=args.repair)
    for m in batch.members:
        if m.report:
            print(f"member '{m.name}': repaired {m.report}")
    selections = []
    t0 = time.perf_counter()
    fused, seconds = fuse_batch_arrays(model, batch, chunk=args.chunk, device=args.device,
                                       selections=selections)
    phases = dict(annotations=t_ann, read=batch.seconds['read'],
                  validate=batch.seconds['validate'], fuse=time.perf_counter() - t0)
    ms = 1000.0 * seconds / max(1, len(batch.img_ids))
    metrics = dict(members={}, fusion=dict(method=args.method, ms_per_image=ms))
    if selections:  # e2e-CEL: the member compute actually used
        import torch
        sel = torch.cat(selections)  # [I, N] batch member order
        remap = member_remap(model.members, batch.names)  # batch member -> model member
        cost = model.member_seconds.cpu()[remap]  # [N] batch order
        metrics['fusion'].update(
            member_seconds_per_image=float((sel @ cost).mean()),
            members_per_image=float(sel.sum(1).mean()),
            selection_frequency={n: float(f) for n, f in zip(batch.names, sel.mean(0))})
        print(f"selected {metrics['fusion']['members_per_image']:.2f} members per image, "
              f"{metrics['fusion']['member_seconds_per_image']:.3f} s of member compute")
    if not args.no_eval:
        t0 = time.perf_counter()
        for m in batch.members:
            metrics['members'][m.name] = coco_metrics(coco, member_results(m))
        metrics['fusion'].update(coco_metrics(coco, arrays_to_results(fused)))
        width = max(len(n) for n in list(metrics['members']) + [args.method]) + 2
        print(f"{'':{width}}{'AP':>8}{'AP50':>8}{'AP75':>8}")
        for name, m in list(metrics['members'].items()) + [
                (f'fusion ({args.method})', metrics['fusion'])]:
            print(f"{name:{width}}{m['AP']:8.4f}{m['AP50']:8.4f}{m['AP75']:8.4f}")
        phases['evaluate'] = time.perf_counter() - t0
    print(f'fused {len(batch.img_ids)} images in {seconds:.3f} s '
          f'({ms:.3f} ms per image, {args.device})')
    t0 = time.perf_counter()
    if args.out:
        write_results_json(args.out, fused.image_id, fused.category_id, fused.bbox,
                           fused.score)
        print(f'wrote {len(fused.score)} detections to {args.out}')
    if args.metrics_out:
        with open(args.metrics_out, 'w', encoding='utf-8') as f:
            json.dump(metrics, f, indent=1)
    phases['write'] = time.perf_counter() - t0
    start = T_START if argv is None else t_main  # in process (tests), the imports are old
    if argv is None:
        phases = {'start-up': T_IMPORTED - T_START, **phases}
    print('seconds: ' + ', '.join(f'{k} {v:.2f}' for k, v in phases.items())
          + f', total {time.perf_counter() - start:.2f}')


if __name__ == '__main__':
    # The ~1M objects that the imports made live until exit: frozen, the collector no longer
    # rescans them at each full collection while millions of detections are decoded.
    gc.freeze()
    run_cli(main)
