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
mmengine; a trained ensemble (learned, cel) imports them to build its model.

Memory is bounded by the detections, compact: each member file is decoded a block at a
time (the compiled decoder ``mmens._results_io``) and validated block by block into 28
bytes per detection (``read_member_columns``); the images are fused ``--chunk`` at a time
and each chunk's detections are written as soon as they are fused (with ``--no-eval``
nothing else is kept). ``--workers N`` (default: the usable cores, at most 8; 1 on
CUDA) reads N files at once (threads) and fuses chunks in N forked processes of one
OpenMP thread each. ``--shard I/N`` fuses the images whose index in the annotation file
is I modulo N (one job of a SLURM array, say); the shards' outputs, their entries put in
image-id order (stable), make up the unsharded output byte for byte. A shard is not
evaluated: ``--shard`` needs ``--no-eval`` (evaluate the merged file).

Run as a script with a fixed rule, a thread reads the member files while the main thread
imports torch & co. (:class:`Prefetch`; the decoder and the compiled checks release the GIL);
its errors are raised by ``main``, in their turn.

The last line splits the wall time: start-up (the imports), annotations, model (the fixed
rule, or the checkpoint's model with the imports of mmdet & co.), read (decoding and
validating the member files; "prefetched": what was left of it after the start-up), fuse
(fusing, ranking the top 100 per image and writing each chunk; ``fused ... in`` gives the
seconds of ``model.fuse`` and the ranking alone, summed over the workers), evaluate (without
``--no-eval``), and the total.
"""
import time

T_START = time.perf_counter()  # before the imports: they are part of the wall time

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import os.path as osp  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple  # noqa: E402

# Before torch starts OpenMP: idle threads sleep instead of spinning. With a spinning
# barrier, a core held by any other process stretched the fusion from about 1 s to 3-16 s
# (docs/benchmarks.md); sleeping costs little when the machine is idle.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

FIXED = ('wbf', 'nms', 'soft_nms', 'nmw')


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``--shard I/N`` as ``(I, N)``, with ``0 <= I < N`` (one line otherwise)."""
    if text is None:
        return None
    m = re.fullmatch(r'(\d+)/(\d+)', text.strip())
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f'--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}')
    return int(m[1]), int(m[2])


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
    p.add_argument('--selection-out', help='cel: write each image\'s selected members, the '
                   'probes and the mean member seconds per image as JSON here')
    p.add_argument('--repair', action='store_true',
                   help='repair bad entries (clip scores, drop invalid boxes) with counts')
    p.add_argument('--no-eval', action='store_true', help='fuse only (GT without labels)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--chunk', type=int, default=256, help='images fused per call')
    p.add_argument('--mask-thr', type=float, default=0.5,
                   help='members with masks: a pixel is in the fused mask when the '
                   'weighted mean of the cluster\'s masks is at least this')
    p.add_argument('--mask-vote', action='store_true',
                   help='members with masks: every mask weighs 1, not its WBF weight')
    p.add_argument('--workers', type=int,
                   help='member files read at once, and processes fusing the chunks '
                   '(default: the usable cores, at most 8)')
    p.add_argument('--shard', metavar='I/N',
                   help='fuse only the images whose index in --ann is I modulo N')
    return p.parse_args(argv)


def member_names(args: argparse.Namespace) -> List[str]:
    return args.names or [osp.splitext(osp.basename(f))[0] for f in args.preds]


def check_args(args: argparse.Namespace) -> None:
    """Every mistake of the command line that can be seen without reading the files, as
    one ``ValueError``, before any work."""
    if args.method != 'cel' and (args.k is not None or args.budget_seconds is not None):
        raise ValueError(f'--k / --budget-seconds are for --method cel, not {args.method}')
    if args.method != 'cel' and args.selection_out is not None:
        raise ValueError(f'--selection-out is for --method cel, not {args.method}')
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
    if not 0 < args.mask_thr <= 1:  # box-only files too: a mistake is one either way
        raise ValueError(f'--mask-thr must be in (0, 1], got {args.mask_thr}')
    if args.workers is None:
        args.workers = min(usable_cores(), 8) if args.device == 'cpu' else 1
    if args.workers < 1:
        raise ValueError(f'--workers must be at least 1, got {args.workers}')
    if args.workers > 1 and (args.device != 'cpu' or 'fork' not in
                             multiprocessing.get_all_start_methods()):
        raise ValueError(f'--workers {args.workers} fuses in forked processes, on cpu only '
                         f'(--device {args.device}): pass --workers 1')
    args.shard = parse_shard(args.shard)
    if args.shard and not args.no_eval:
        raise ValueError('--shard fuses a part of the images, which is not evaluated: pass '
                         '--no-eval, and evaluate the merged shards')
    check_member_files(args.ann, args.preds)
    for opt in ('checkpoint', 'config'):
        if getattr(args, opt) is not None:
            check_input_file(getattr(args, opt), f'--{opt}')
    for opt in ('out', 'metrics_out', 'selection_out'):
        if getattr(args, opt) is not None:
            check_output_file(getattr(args, opt), '--' + opt.replace('_', '-'))


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shard_images(images: List[dict], img_ids, shard: Optional[Tuple[int, int]]):
    """The positions (in ``img_ids``, sorted) of the images to fuse, in that order: all,
    or ``--shard I/N``'s, whose index in the annotation file's image order is I modulo N."""
    import numpy as np  # imported by now; this module imports it after the prefetch starts
    if shard is None:
        return np.arange(len(img_ids))
    i, n = shard
    in_file_order = np.searchsorted(img_ids, [im['id'] for im in images])
    return np.sort(in_file_order[i::n])


def chunk_layout(img_ids, selected, chunk: int) -> tuple:
    """``(chunk of each image [I] int32 (-1: not selected), its index in its chunk [I],
    the number of chunks)`` for ``selected`` (positions in ``img_ids``) by ``chunk``."""
    import numpy as np
    chunk_of = np.full(len(img_ids), -1, dtype=np.int32)
    chunk_of[selected] = np.arange(len(selected)) // chunk
    local = np.zeros(len(img_ids), dtype=np.int64)
    local[selected] = np.arange(len(selected)) % chunk
    return chunk_of, local, -(-len(selected) // chunk)


def read_member_files(args: argparse.Namespace, images: List[dict], cat_ids: List[int],
                      layout: tuple, read, slots: Optional[threading.Semaphore] = None
                      ) -> list:
    """Every member file decoded and validated a block at a time by ``read``
    (``read_member_columns``), ``--workers`` files at once (the decoder releases the GIL;
    fewer while ``slots`` holds them back), by chunk (``layout``, other shards' images
    left out); a bad file raises its error in file order."""
    sizes = {im['id']: (im['width'], im['height']) for im in images}
    names = member_names(args)
    workers = args.workers or min(usable_cores(), 8)

    def read_one(path: str, name: str):
        with slots if slots is not None else contextlib.nullcontext():
            return read(path, name, sizes, cat_ids, args.repair, layout[::2])

    with ThreadPoolExecutor(max(1, min(workers, len(names)))) as pool:
        jobs = [pool.submit(read_one, f, n) for f, n in zip(args.preds, names)]
        try:
            return [job.result() for job in jobs]
        except ValueError:
            for job in jobs:
                job.cancel()
            raise


def _coco_results():
    """``mmens.datasets.coco_results`` (numpy, msgspec, orjson and the compiled decoder),
    loaded from its file: as a submodule, importing it would first import ``mmens``
    (torch), the very start-up that the prefetch overlaps."""
    location = importlib.util.find_spec('mmens').submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        '_mmens_coco_results', osp.join(location, 'datasets', 'coco_results.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Prefetch(threading.Thread):
    """Run as a script with a fixed rule, the member files are read while this process
    imports torch & co. (a thread: the decoder and the compiled checks release the GIL):
    the annotation file's images and categories (msgspec), the chunk layout, then
    :func:`read_member_files`. :meth:`members` gives them to ``main`` if its layout is
    the same, raises a bad member file's error there, in its turn; anything else that
    fails here is redone by ``main``, whose errors are the ones of the tool."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.args, self.key, self.value, self.error = args, None, None, None
        self.decoded, self.decoded_ready = None, threading.Event()
        # One core is left to the imports (a third thread on 2 cores stretched them by
        # 0.2-0.3 s, longer than the read it sped up); :meth:`members` gives it back.
        workers = args.workers or min(usable_cores(), 8)
        self.slots = threading.Semaphore(max(1, workers - 1))
        # The reader takes the GIL back after each compiled call (hundreds per file); at
        # the default 5 ms switch interval it waited for the importing thread up to 5 ms
        # each time and had not finished when the imports had (0.08-0.16 s left at 5,040
        # images): 0.5 ms until main asks for the members.
        self.interval = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)
        self.start()

    def run(self) -> None:
        try:
            import msgspec
            import numpy as np
            read = _coco_results().read_member_columns

            class ImagesAndCategories(msgspec.Struct):  # the annotations parsed over
                images: List[Dict[str, Any]]
                categories: List[Dict[str, Any]]

            with open(self.args.ann, 'rb') as f:
                ann = msgspec.json.decode(f.read(), type=ImagesAndCategories)
            self.decoded = ann
            images = ann.images
            cat_ids = sorted(c['id'] for c in ann.categories)
            img_ids = np.array(sorted(im['id'] for im in images), dtype=np.int64)
            selected = shard_images(images, img_ids, parse_shard(self.args.shard))
            self.key = (img_ids, selected, cat_ids)
            layout = chunk_layout(img_ids, selected, self.args.chunk)
        except Exception:  # noqa: BLE001 (main reads the annotation file and says what)
            return
        finally:
            self.decoded_ready.set()
        try:
            self.value = read_member_files(self.args, images, cat_ids, layout, read,
                                           self.slots)
        except ValueError as e:  # a bad member file: raised by main, in its turn
            self.error = e
        except Exception:  # noqa: BLE001 (main reads the files again)
            self.key = None

    def annotations(self):
        """The annotation file's images and categories as decoded here (for
        ``load_coco(decoded=...)``; None where they were not)."""
        self.decoded_ready.wait()
        return self.decoded

    def members(self, img_ids, selected, cat_ids) -> Optional[list]:
        """The members read here, if they were read for this layout (else None)."""
        self.slots.release()  # the imports are done: their core reads too
        sys.setswitchinterval(self.interval)
        self.join()
        if self.key is None or not (np.array_equal(self.key[0], img_ids) and np.array_equal(
                self.key[1], selected) and self.key[2] == list(cat_ids)):
            return None
        if self.error is not None:
            raise self.error
        return self.value


def start_prefetch(argv: Optional[List[str]]) -> Optional[Prefetch]:
    """A :class:`Prefetch` for the command line ``argv`` (a fixed rule; None otherwise, or
    when a file is missing: main says so)."""
    try:
        args = parse_args(argv)
    except SystemExit:
        return None  # argparse's error (or --help): main prints it
    if args.method not in FIXED or not all(osp.isfile(f) for f in [args.ann, *args.preds]):
        return None
    return Prefetch(args)


# Before torch & co. are imported: the prefetch reads while they are.
PREFETCH = start_prefetch(sys.argv[1:]) if __name__ == '__main__' else None
if PREFETCH is not None and PREFETCH.args.device == 'cpu':
    # torch's import tries the optional CUDA driver bindings (cuda-python: 40-80 ms of the
    # start-up), which only CUDA calls use: a fixed rule on the CPU runs as without them
    sys.modules.setdefault('cuda.bindings', None)

# What every method needs (torch, pycocotools, no OpenMMLab package): the fixed rules run
# on these alone, and a trained ensemble imports mmdet & co. in load_ensemble().
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmens.apis.fixed_ensemble import build_fixed_ensemble  # noqa: E402
from mmens.apis.inference import member_remap  # noqa: E402
from mmens.apis.member_files import load_coco, member_results  # noqa: E402
from mmens.datasets.coco_results import (MemberColumns, MemberPredictions,  # noqa: E402
                                         ResultsWriter, index_in, read_member_columns,
                                         results_text)
from mmens.evaluation.coco_eval import (arrays_to_results, coco_metrics,  # noqa: E402
                                        results_to_arrays)
from mmens.evaluation.fast_coco_ap import DetectionArrays  # noqa: E402
from mmens.ops.results import rank_results  # noqa: E402
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


class Members(NamedTuple):
    """The validated member files, compact (:class:`MemberColumns`), in file order."""
    names: List[str]
    members: List[MemberColumns]
    img_ids: np.ndarray  # [I] int64, sorted: MemberColumns.images indexes it
    sizes: np.ndarray  # [I, 2] float32 width, height
    cat_ids: List[int]  # the model's label order
    label_of: np.ndarray  # [C] int64: MemberColumns.categories -> label


class ChunkPlan:
    """The images to fuse (``selected``, positions among the sorted image ids) in chunks
    of ``chunk``; the members are read by chunk (:meth:`read`), so that a chunk is one
    slice of each member's columns (file order within it, as ``select_images`` has it)."""

    def __init__(self, img_ids: np.ndarray, selected: np.ndarray, chunk: int) -> None:
        self.img_ids, self.selected, self.chunk = img_ids, selected, chunk
        self.layout = chunk_layout(img_ids, selected, chunk)
        self.chunk_of, self.local, self.n_chunks = self.layout
        self.data: Optional[Members] = None
        self.prefetched = False  # read while the modules were imported

    def read(self, args: argparse.Namespace, coco, cat_ids,
             prefetch: Optional[Prefetch] = None) -> Members:
        """The member files (:func:`read_member_files`), or the prefetch's."""
        cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco.getCatIds())
        names = member_names(args)
        images = coco.dataset['images']
        members = prefetch.members(self.img_ids, self.selected, cat_ids) if prefetch else None
        self.prefetched = members is not None
        if members is None:
            members = read_member_files(args, images, cat_ids, self.layout,
                                        read_member_columns)
        for m in members:
            if m.report:
                print(f"member '{m.name}': repaired {m.report}")
        sizes = {im['id']: (im['width'], im['height']) for im in images}
        wh = np.array([sizes[i] for i in self.img_ids.tolist()], dtype=np.float32)
        label_of = index_in(np.unique(np.asarray(cat_ids, dtype=np.int64)), cat_ids)
        self.data = Members(names, members, self.img_ids, wh.reshape(-1, 2), cat_ids,
                            label_of)
        return self.data


    def part(self, c: int, remap: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], np.ndarray]:
        """Chunk ``c`` packed as ``fuse_with_metainfo`` takes it (members in model order),
        and the COCO image id of each of its images."""
        cols = {k: [] for k in ('bboxes', 'scores', 'labels', 'members', 'images')}
        for j, m in enumerate(self.data.members):
            s = slice(m.bounds[c], m.bounds[c + 1])
            cols['bboxes'].append(m.bboxes[s])
            cols['scores'].append(m.scores[s])
            cols['labels'].append(self.data.label_of[m.categories[s]])
            cols['members'].append(np.full(s.stop - s.start, int(remap[j]), dtype=np.int64))
            cols['images'].append(self.local[m.images[s]])
        part = {k: torch.from_numpy(np.concatenate(v)) for k, v in cols.items()}
        images = self.selected[c * self.chunk:(c + 1) * self.chunk]
        part['image_sizes'] = torch.from_numpy(self.data.sizes[images])
        return part, self.data.img_ids[images]


_JOB: dict = {}  # the model and the plan, for :func:`fuse_chunk` (forked workers inherit it)


@torch.no_grad()
def fuse_chunk(c: int) -> tuple:
    """Fuse chunk ``c``: ``(detections or None, their count, their JSON text or None,
    the seconds of the fusion and ranking, the selection of e2e-CEL or None)``."""
    job = _JOB
    part, img_ids = job['plan'].part(c, job['remap'])
    part = {k: v.to(job['device']) for k, v in part.items()}
    t0 = time.perf_counter()
    (boxes, scores, labels, images), info = job['model'].fuse_with_metainfo(part)
    ranked = rank_results(boxes, scores, labels, images, part['image_sizes'], max_per_img=100)
    if job['device'].startswith('cuda'):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    fused = results_to_arrays(*ranked, img_ids, job['plan'].data.cat_ids)
    sel = info.get('selected_members')
    sel = None if sel is None else sel[:, job['remap'].to(sel.device)].float().cpu()
    text = results_text(*fused) if job['write'] and len(fused.score) else None
    return (fused if job['keep'] else None), len(fused.score), text, seconds, sel


def _fuse_worker(conn, first: int, step: int) -> None:
    """A forked worker: chunks ``first, first + step, ...``, each sent as it is fused (the
    pipe blocks it when the main process falls behind: memory stays bounded)."""
    # One thread: N workers on N cores, no oversubscription; and GNU OpenMP's thread pool
    # does not survive a fork (a child of a process that used it can hang in it), while a
    # team of one never touches it.
    torch.set_num_threads(1)
    try:
        for c in range(first, _JOB['plan'].n_chunks, step):
            conn.send((True, fuse_chunk(c)))
    except BaseException as e:  # noqa: BLE001 (raised again in the main process)
        conn.send((False, e))
    conn.close()


def fuse_chunks(args: argparse.Namespace, model, plan: ChunkPlan) -> Iterator[tuple]:
    """:func:`fuse_chunk` of every chunk, in order; chunk ``c`` in forked worker ``c``
    modulo ``--workers`` (forked: they share the columns, and nothing is pickled but the
    results). One worker fuses in this process, with torch's threads."""
    _JOB.update(model=model.to(args.device).eval(), plan=plan, device=args.device,
                remap=member_remap(model.members, plan.data.names), write=bool(args.out),
                keep=not args.no_eval)
    n = min(args.workers, plan.n_chunks)
    if n < 2:
        yield from map(fuse_chunk, range(plan.n_chunks))
        return
    ctx = multiprocessing.get_context('fork')
    pipes, procs = [], []
    try:
        for w in range(n):
            recv, send = ctx.Pipe(duplex=False)
            procs.append(ctx.Process(target=_fuse_worker, daemon=True, args=(send, w, n)))
            procs[-1].start()
            send.close()
            pipes.append(recv)
        for c in range(plan.n_chunks):
            try:
                ok, value = pipes[c % n].recv()
            except EOFError:
                raise RuntimeError(f'fusion worker {c % n} died (exit code '
                                   f'{procs[c % n].exitcode}), e.g. out of memory') from None
            if not ok:
                raise value
            yield value
    finally:
        for p in procs:
            p.terminate()
            p.join()


def selection_metrics(model, batch, selections: list, img_ids,
                      path: Optional[str] = None) -> dict:
    """e2e-CEL: the compute each image's selection cost (the members run, probes included,
    and the selection net: ``model.run_seconds``), and with ``path`` (``--selection-out``)
    ``{"probes", "selected": {image_id: members fused}, "member_seconds"}`` as JSON."""
    sel = torch.cat(selections)  # [I, N] batch member order, rows in img_ids' order
    x = torch.zeros_like(sel)
    x[:, member_remap(model.members, batch.names)] = sel  # model member order
    seconds = model.run_seconds(x.to(model.member_seconds.device)).cpu()  # [I]
    probes = [model.members[p] for p in model.probes]
    out = dict(member_seconds_per_image=float(seconds.mean()),
               members_per_image=float(sel.sum(1).mean()), probes=probes,
               selection_seconds=float(model.selection_seconds),
               selection_frequency={n: float(f) for n, f in zip(batch.names, sel.mean(0))})
    print(f"selected {out['members_per_image']:.2f} members per image; member seconds per "
          f"image (probes + selected + selection net): {out['member_seconds_per_image']:.4f}")
    if path:
        if osp.dirname(path):
            os.makedirs(osp.dirname(path), exist_ok=True)
        names = np.asarray(batch.names)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(dict(probes=probes, selected={
                str(int(i)): names[row].tolist() for i, row in zip(img_ids, sel.numpy() > 0.5)},
                member_seconds=out['member_seconds_per_image']), f)
    return out


def as_predictions(data: Members, m: MemberColumns) -> MemberPredictions:
    """A member's compact columns with COCO ids again (to score it)."""
    cats = np.unique(np.asarray(data.cat_ids, dtype=np.int64))
    return MemberPredictions(m.name, data.img_ids[m.images], m.bboxes, m.scores,
                             cats[m.categories], m.report)


def evaluate(coco, data: Members, fused: DetectionArrays, metrics: dict, method: str) -> None:
    """COCO AP of each member and of the fusion, into ``metrics``, and printed."""
    for m in data.members:
        metrics['members'][m.name] = coco_metrics(coco, member_results(as_predictions(data, m)))
    metrics['fusion'].update(coco_metrics(coco, arrays_to_results(fused)))
    width = max(len(n) for n in list(metrics['members']) + [method]) + 2
    print(f"{'':{width}}{'AP':>8}{'AP50':>8}{'AP75':>8}")
    for name, m in list(metrics['members'].items()) + [(f'fusion ({method})',
                                                        metrics['fusion'])]:
        print(f"{name:{width}}{m['AP']:8.4f}{m['AP50']:8.4f}{m['AP75']:8.4f}")


def run_fusion(args: argparse.Namespace, model, plan: ChunkPlan) -> tuple:
    """Fuse every chunk, writing each to ``--out`` as it comes: ``(the fused detections
    when they are evaluated, else None; their count; the fusion seconds; selections)``."""
    if args.out and osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)  # checked by check_args
    parts, count, seconds, selections = [], 0, 0.0, []
    with (ResultsWriter(args.out) if args.out else contextlib.nullcontext()) as out:
        for fused, n, text, s, sel in fuse_chunks(args, model, plan):
            count, seconds = count + n, seconds + s
            if out is not None and text:
                out.write_text(text)
            if fused is not None:
                parts.append(fused)
            if sel is not None:
                selections.append(sel)
    fused = DetectionArrays(*(np.concatenate(c) for c in zip(*parts))) if parts else None
    if fused is None and not args.no_eval:  # no image: nothing fused
        ids = np.zeros(0, dtype=np.int64)
        fused = DetectionArrays(ids, ids, np.zeros((0, 4)), np.zeros(0))
    if args.out:
        print(f'wrote {count} detections to {args.out}')
    return fused, count, seconds, selections


def main(argv=None) -> None:
    t_main = time.perf_counter()
    args = parse_args(argv)
    check_args(args)
    check_device(args.device)
    prefetch = PREFETCH if argv is None else None  # as a script, with a fixed rule
    coco = load_coco(args.ann, annotations=not args.no_eval,  # --no-eval: images, categories
                     decoded=prefetch.annotations() if prefetch and args.no_eval else None)
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
    t0 = time.perf_counter()
    img_ids = np.array(sorted(im['id'] for im in coco.dataset['images']), dtype=np.int64)
    images = coco.dataset['images']
    plan = ChunkPlan(img_ids, shard_images(images, img_ids, args.shard), args.chunk)
    data = plan.read(args, coco, cat_ids, prefetch if cat_ids is None else None)
    if any(m.has_masks for m in data.members):  # seen by the decoder: no scan of box files
        from mask_path import files_with_masks, fuse_masks  # noqa: E402 (torch imported)
        if files_with_masks(args):  # members with instance masks: their path (mask_path.py)
            del data
            return fuse_masks(args, coco, model, cat_ids)
    phases = dict(annotations=t_ann, model=t_model, read=time.perf_counter() - t0)
    t0 = time.perf_counter()
    fused, _, seconds, selections = run_fusion(args, model, plan)
    phases['fuse'] = time.perf_counter() - t0
    n_img = len(plan.selected)
    ms = 1000.0 * seconds / max(1, n_img)
    metrics = dict(members={}, fusion=dict(method=args.method, ms_per_image=ms))
    if selections:
        metrics['fusion'].update(selection_metrics(
            model, data, selections, np.asarray(data.img_ids)[plan.selected],
            args.selection_out))
    if not args.no_eval:
        t0 = time.perf_counter()
        evaluate(coco, data, fused, metrics, args.method)
        phases['evaluate'] = time.perf_counter() - t0
    print(f'fused {n_img} images in {seconds:.3f} s ({ms:.3f} ms per image, {args.device}'
          f'{f", {args.workers} workers" if args.workers > 1 else ""})')
    if args.metrics_out:
        if osp.dirname(args.metrics_out):
            os.makedirs(osp.dirname(args.metrics_out), exist_ok=True)
        with open(args.metrics_out, 'w', encoding='utf-8') as f:
            json.dump(metrics, f, indent=1)
    start = T_START if argv is None else t_main  # in process (tests), the imports are old
    if argv is None:
        phases = {'start-up': T_IMPORTED - T_START, **phases}
    note = dict(read=' (prefetched)' if plan.prefetched else '')
    print('seconds: ' + ', '.join(f'{k} {v:.2f}{note.get(k, "")}' for k, v in phases.items())
          + f', total {time.perf_counter() - start:.2f}')


if __name__ == '__main__':
    # The ~1M objects that the imports made live until exit: frozen, the collector no longer
    # rescans them at each full collection while the files are read.
    gc.freeze()
    run_cli(main)
    # Done, the output files closed and the workers joined: the interpreter's teardown
    # would free the columns and tensors and torch's modules object by object, where the
    # OS frees the process at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
