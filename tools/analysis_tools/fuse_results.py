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

With a fixed rule the tool imports torch, numpy and pycocotools, never mmdet, mmcv or
mmengine; a trained ensemble (learned, cel) imports them to build its model. Run as a
script, a reader process forked before the imports decodes the member files while this
process imports torch & co., and this process decodes the files that the reader has not
started once its imports are done (``member_reader.py``); the validation, its errors
included, stays in this process.

The last line splits the wall time: start-up (the imports), annotations, model (the fixed
rule, or the checkpoint's model with the imports of mmdet & co.), read (decoding the
member files; with the reader process, the files decoded here and the wait for the
reader's columns, and in brackets the reader's own seconds, spent during the start-up,
and the number of files decoded here), validate (checks and packing), fuse (the
``fused ... in`` seconds of ``model.fuse`` and the per-image top 100, plus slicing the
chunks and mapping to COCO ids), evaluate (without ``--no-eval``), write, and the total.
"""
import time

T_START = time.perf_counter()  # before the imports: they are part of the wall time

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import os.path as osp  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402

# Before torch starts OpenMP: idle threads sleep instead of spinning. With a spinning
# barrier, a core held by any other process stretched the fusion from about 1 s to 3-16 s
# (docs/benchmarks.md); sleeping costs little when the machine is idle.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from member_reader import MemberReader  # noqa: E402  (stdlib only)

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
    p.add_argument('--no-reader', action='store_true',
                   help='decode the member files in this process, after the start-up, '
                   'not in a reader process during it (one busy core, or little memory)')
    return p.parse_args(argv)


def member_names(args: argparse.Namespace) -> List[str]:
    return args.names or [osp.splitext(osp.basename(f))[0] for f in args.preds]


def check_args(args: argparse.Namespace) -> None:
    """Every mistake of the command line that can be seen without reading the files, as
    one ``ValueError``, before any work."""
    if args.method != 'cel' and (args.k is not None or args.budget_seconds is not None):
        raise ValueError(f'--k / --budget-seconds are for --method cel, not {args.method}')
    if args.method == 'cel' and args.k is not None and args.budget_seconds is not None:
        raise ValueError('give --k (members per image) or --budget-seconds, not both')
    if args.method in FIXED:
        for opt in ('checkpoint', 'config'):
            if getattr(args, opt) is not None:
                raise ValueError(f'--{opt} is for --method learned/cel, not {args.method}')
        if args.weights is not None and len(args.weights) != len(args.preds):
            raise ValueError(f'--weights has {len(args.weights)} values for '
                             f'{len(args.preds)} prediction files')
    elif not args.checkpoint:
        raise ValueError(f'--method {args.method} needs --checkpoint')
    names = member_names(args)
    if len(names) != len(args.preds):
        raise ValueError(f'--names has {len(args.names)} names for {len(args.preds)} '
                         'prediction files')
    if len(set(names)) != len(names):
        raise ValueError(f'member names must be unique (file stems, or --names), got {names}')
    if args.chunk < 1:
        raise ValueError(f'--chunk must be at least 1, got {args.chunk}')
    check_member_files(args.ann, args.preds)
    for opt in ('checkpoint', 'config'):
        if getattr(args, opt) is not None:
            check_input_file(getattr(args, opt), f'--{opt}')
    for opt in ('out', 'metrics_out'):
        if getattr(args, opt) is not None:
            check_output_file(getattr(args, opt), '--' + opt.replace('_', '-'))


def start_reader(argv: Optional[List[str]]) -> Optional[MemberReader]:
    """A :class:`MemberReader` for the command line ``argv`` (None where fork or memfd is
    missing, with ``--no-reader``, or when a member file is missing: main says so)."""
    if 'fork' not in multiprocessing.get_all_start_methods():
        return None
    args = parse_args(argv)  # bad arguments stop here, before the imports
    names = member_names(args)
    if args.no_reader or not hasattr(os, 'memfd_create') or len(names) != len(
            args.preds) or not all(osp.isfile(f) for f in args.preds):
        return None
    return MemberReader(args.preds, names)


# Before torch & co. are imported: the reader process starts as small as this process is now.
READER = start_reader(sys.argv[1:]) if __name__ == '__main__' else None

# What every method needs (torch, pycocotools, no OpenMMLab package): the fixed rules run
# on these alone, and a trained ensemble imports mmdet & co. in load_ensemble().
from mmens.apis.fixed_ensemble import build_fixed_ensemble  # noqa: E402
from mmens.apis.inference import fuse_batch_arrays, member_remap  # noqa: E402
from mmens.apis.member_files import load_coco, load_member_batch, member_results  # noqa: E402
from mmens.datasets.coco_results import (read_results_columns,  # noqa: E402
                                         write_results_json)
from mmens.evaluation.coco_eval import arrays_to_results, coco_metrics  # noqa: E402
from mmens.utils.cli import run_cli  # noqa: E402
from mmens.utils.paths import (check_input_file, check_member_files,  # noqa: E402
                               check_output_file)

T_IMPORTED = time.perf_counter()


def check_device(device: str) -> None:
    """``--device`` names a device that this torch can use (one line otherwise)."""
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f'--device {device!r} is not a torch device (cpu, cuda, '
                         'cuda:1, ...)') from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: this torch sees no CUDA device; use --device '
                         'cpu')
    if dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f'--device {device}: only {torch.cuda.device_count()} CUDA '
                         'device(s) here')
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f'--device {device}: mmens fuses on cpu or cuda')


def load_ensemble(args: argparse.Namespace, coco) -> tuple:
    """The trained ensemble of ``--checkpoint`` (its method checked, its budget set) and
    the COCO category id of each of its labels (None: the annotation file's, sorted)."""
    from mmens.apis.inference import load_ensemble_checkpoint  # imports mmdet & co.
    model = load_ensemble_checkpoint(args.checkpoint, args.config, args.device)
    is_cel = hasattr(model, 'set_budget')
    if (args.method == 'cel') != is_cel:
        raise ValueError(f'--method {args.method} does not match the checkpoint '
                         f'{args.checkpoint} ({type(model).__name__})')
    if args.budget_seconds is not None and not model.has_member_seconds:
        raise ValueError(f'--budget-seconds needs the members\' costs (seconds per image), '
                         f'and checkpoint {args.checkpoint} has none (it was trained to '
                         'select --k members per image): pass --k, or train with member '
                         'seconds')
    if args.k is not None or args.budget_seconds is not None:
        model.set_budget(k=args.k, budget=args.budget_seconds)
    classes = (model.dataset_meta or {}).get('classes')
    by_name = {c['name']: c['id'] for c in coco.loadCats(coco.getCatIds())}
    unknown = [c for c in classes or [] if c not in by_name]
    if unknown:
        raise ValueError(f'the ensemble\'s classes {unknown[:5]} are not categories '
                         f'of {args.ann}')
    return model, ([by_name[c] for c in classes] if classes else None)


def read_batch(args: argparse.Namespace, coco, cat_ids, reader: Optional[MemberReader]):
    """The validated member files, packed (the reader process's columns when it runs)."""
    try:
        batch = load_member_batch(coco, args.preds, args.names, cat_ids=cat_ids,
                                  repair=args.repair,
                                  read=reader.read if reader else read_results_columns)
    finally:
        if reader:
            reader.close()
    for m in batch.members:
        if m.report:
            print(f"member '{m.name}': repaired {m.report}")
    return batch


def selection_metrics(model, batch, selections: list) -> dict:
    """e2e-CEL: the member compute actually used, from each image's selection."""
    import torch
    sel = torch.cat(selections)  # [I, N] batch member order
    remap = member_remap(model.members, batch.names)  # batch member -> model member
    cost = model.member_seconds.cpu()[remap]  # [N] batch order
    out = dict(member_seconds_per_image=float((sel @ cost).mean()),
               members_per_image=float(sel.sum(1).mean()),
               selection_frequency={n: float(f) for n, f in zip(batch.names, sel.mean(0))})
    print(f"selected {out['members_per_image']:.2f} members per image, "
          f"{out['member_seconds_per_image']:.3f} s of member compute")
    return out


def evaluate(coco, batch, fused, metrics: dict, method: str) -> None:
    """COCO AP of each member and of the fusion, into ``metrics``, and printed."""
    for m in batch.members:
        metrics['members'][m.name] = coco_metrics(coco, member_results(m))
    metrics['fusion'].update(coco_metrics(coco, arrays_to_results(fused)))
    width = max(len(n) for n in list(metrics['members']) + [method]) + 2
    print(f"{'':{width}}{'AP':>8}{'AP50':>8}{'AP75':>8}")
    for name, m in list(metrics['members'].items()) + [(f'fusion ({method})',
                                                        metrics['fusion'])]:
        print(f"{name:{width}}{m['AP']:8.4f}{m['AP50']:8.4f}{m['AP75']:8.4f}")


def write_outputs(args: argparse.Namespace, fused, metrics: dict) -> None:
    """The fused detections (``--out``) and the metrics (``--metrics-out``)."""
    for path in (args.out, args.metrics_out):
        if path and osp.dirname(path):
            os.makedirs(osp.dirname(path), exist_ok=True)  # checked by check_args
    if args.out:
        write_results_json(args.out, fused.image_id, fused.category_id, fused.bbox,
                           fused.score)
        print(f'wrote {len(fused.score)} detections to {args.out}')
    if args.metrics_out:
        with open(args.metrics_out, 'w', encoding='utf-8') as f:
            json.dump(metrics, f, indent=1)


def main(argv=None) -> None:
    t_main = time.perf_counter()
    args = parse_args(argv)
    check_args(args)
    check_device(args.device)
    coco = load_coco(args.ann, annotations=not args.no_eval)  # --no-eval: images, categories
    t_ann = time.perf_counter() - t_main
    t0 = time.perf_counter()
    if args.method in FIXED:
        model, cat_ids = build_fixed_ensemble(
            member_names(args), args.method, weights=args.weights, iou_thr=args.iou_thr,
            skip_box_thr=args.skip_box_thr, conf_type=args.conf_type, sigma=args.sigma,
            thresh=args.thresh), None
    else:
        model, cat_ids = load_ensemble(args, coco)
    t_model = time.perf_counter() - t0
    reader = READER if argv is None else None
    batch = read_batch(args, coco, cat_ids, reader)
    selections = []
    t0 = time.perf_counter()
    fused, seconds = fuse_batch_arrays(model, batch, chunk=args.chunk, device=args.device,
                                       selections=selections)
    phases = dict(annotations=t_ann, model=t_model, read=batch.seconds['read'],
                  validate=batch.seconds['validate'], fuse=time.perf_counter() - t0)
    ms = 1000.0 * seconds / max(1, len(batch.img_ids))
    metrics = dict(members={}, fusion=dict(method=args.method, ms_per_image=ms))
    if selections:
        metrics['fusion'].update(selection_metrics(model, batch, selections))
    if not args.no_eval:
        t0 = time.perf_counter()
        evaluate(coco, batch, fused, metrics, args.method)
        phases['evaluate'] = time.perf_counter() - t0
    print(f'fused {len(batch.img_ids)} images in {seconds:.3f} s '
          f'({ms:.3f} ms per image, {args.device})')
    t0 = time.perf_counter()
    write_outputs(args, fused, metrics)
    phases['write'] = time.perf_counter() - t0
    start = T_START if argv is None else t_main  # in process (tests), the imports are old
    if argv is None:
        phases = {'start-up': T_IMPORTED - T_START, **phases}
    read_note = (f' ({reader.seconds:.2f} in the reader, {len(reader.stolen)} of '
                 f'{len(reader.files)} files here)' if reader else '')
    print('seconds: ' + ', '.join(f'{k} {v:.2f}' + (read_note if k == 'read' else '')
                                  for k, v in phases.items())
          + f', total {time.perf_counter() - start:.2f}')


if __name__ == '__main__':
    # The ~1M objects that the imports made live until exit: frozen, the collector no longer
    # rescans them at each full collection while millions of detections are decoded.
    gc.freeze()
    run_cli(main)
    # Done, the output files closed and the reader joined: the interpreter's teardown
    # would free the ~1.2 GB of columns and tensors and torch's modules object by object
    # (0.1-0.15 s of a 4 s run), where the OS frees the process at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
