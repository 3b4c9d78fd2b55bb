"""The benchmark's console lines and its Markdown tables (docs/benchmarks.md, README)."""
import os
import os.path as osp
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from .methods import APIS, METHODS, backend_note
from .timing import Case, threads_label

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
MB = 2.0**20


def memory_summary(case: Case, args) -> Tuple[str, str]:
    """What the peak memory is and its figures per thread count (MiB)."""
    kind = 'CUDA max allocated' if args.device == 'cuda' else 'RSS growth'
    mem = '; '.join(f'{threads_label(t)}: list {case.mem["list", t] / MB:.1f}, '
                    f'packed {case.mem["packed", t] / MB:.1f} MiB'
                    for t in case.threads() if ('list', t) in case.mem)
    return kind, mem


def print_case(case: Case, args) -> None:
    """ensemble-boxes' and mmens' times per image, speed-ups and peak memory."""
    label = METHODS[case.method][1]
    eb = (f'all {case.images:,} images' if case.ref_images == case.images
          else f'timed on {case.ref_images:,} of {case.images:,} images, '
          'per-image time extrapolated')
    print(f'  {label:9s} ensemble-boxes {case.ref_ms:9.3f} ms/img ({eb})')
    for t in case.threads():
        cells = [f'{api} {case.ms(api, t):8.4f} ms/img x{case.ratio(api, t):7.1f}'
                 for api in APIS]
        print(f'  {"":9s} mmens {threads_label(t):10s} ' + ' | '.join(cells))
    if case.mem:
        kind, mem = memory_summary(case, args)
        ref = (f'ensemble-boxes {case.ref_mem / MB:.2f} MiB tracemalloc, '
               f'{case.ref_rss / MB:.1f} MiB RSS growth (per-image loop) | '
               if case.ref_images else '')
        print(f'  {"":9s} peak memory: {ref}mmens {case.images:,} images at '
              f'once ({kind}) {mem}', flush=True)


def print_check(case: Case) -> None:
    sets = ', '.join(f'{k}: {len(v)} differ (first {v[:5]})' for k, v in case.bad.items())
    print(f'  {"":9s} outputs equal {case.equal:,}/{case.checked:,} images '
          f'(both APIs, every thread count){"; " + sets if sets else ""}', flush=True)


def print_coco(case: Case, args, main_case: Optional[Case]) -> None:
    """Seconds of the COCO-sized call, and ensemble-boxes' extrapolated."""
    label = METHODS[case.method][1]
    for t in case.threads():
        cells = [f'{api} {case.secs[api, t]:7.2f} s' for api in APIS]
        print(f'  {label:9s} mmens {threads_label(t):10s} ' + ' | '.join(cells))
        label = ''
    if main_case is not None:
        est = main_case.ref_ms * case.images / 1e3
        print(f'  {"":9s} ensemble-boxes would take ~{est:.1f} s '
              f'({main_case.ref_ms:.3f} ms/img of the main load x {case.images:,})')
    if case.mem:
        kind, mem = memory_summary(case, args)
        print(f'  {"":9s} peak memory ({kind}, during the timed call) {mem}', flush=True)


def revision() -> str:
    """Short commit of the tree, and whether the code timed differs from it."""
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'mmens', 'setup.py'],
                               cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown commit'
    return f'commit {rev}' + (' + uncommitted changes to mmens/ or setup.py'
                              if dirty else '')


def command(argv: Optional[Sequence[str]]) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = 'python tools/analysis_tools/benchmark_fusion.py'
    return ' '.join([cmd] + [shlex.quote(a) for a in argv])


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


def _clock_note(args) -> str:
    return ('the process\' CPU time (--clock cpu)' if getattr(args, 'clock', 'wall') == 'cpu'
            else 'wall time')


def _intro(args, argv, wall: float) -> List[str]:
    """The command and the conditions of the run, above the tables."""
    make = not (sys.argv[1:] if argv is None else argv)
    return [
        f'Command: `{command(argv)}`' + (' (`make bench`)' if make else ''), '',
        f'Generated COCO-like loads ({args.members} members, {args.classes} classes, seed '
        f'{args.seed}); ensemble-boxes {eb_version()} one image at a time (NumPy, '
        'single-threaded) against mmens batched over all images in one call (list API, '
        'packing included; packed API: input already packed); speed-up = ensemble-boxes '
        'ms/image / mmens list API ms/image; outputs compared with ensemble-boxes on the '
        f'images shown; times are {_clock_note(args)}. {revision()}, torch '
        f'{torch.__version__}, {cpu_name()}, device {args.device}, '
        f'{backend_note(args.device)}; load average {args.load_avg} at the '
        f'start, {load_average()} at the end (a busy machine slows the all-threads runs '
        f'most); wall time {wall / 60:.1f} min.', '']


def _memory_cell(c: Case, t: int) -> str:
    return (f'{c.mem["list", t] / MB:.0f} / {c.mem["packed", t] / MB:.0f} MiB'
            if ('list', t) in c.mem else '')


def _table(head: List[str], rows: List[List[str]]) -> List[str]:
    return (['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
            + ['| ' + ' | '.join(r) + ' |' for r in rows])


def _loads_table(cases: List[Case], ts: List[int]) -> List[str]:
    """One row per method and boxes per member: ms per image and speed-ups."""
    head = ['method', 'boxes / member', 'images', 'ensemble-boxes ms / image']
    for t in ts:
        head += [f'mmens {threads_label(t)} ms / image', f'speed-up, {threads_label(t)}']
    head += ['packed API ms / image (' + ' / '.join(threads_label(t) for t in ts) + ')',
             'outputs equal', f'peak memory, mmens {threads_label(ts[0])} (list / packed)']
    rows = []
    for c in sorted(cases, key=lambda c: (list(METHODS).index(c.method), c.boxes)):
        imgs = f'{c.images:,}' + ('' if c.ref_images == c.images else
                                  f' (ensemble-boxes timed on {c.ref_images:,})')
        row = [METHODS[c.method][1], f'{c.boxes:,}', imgs, f'{c.ref_ms:.3f}']
        for t in ts:
            row += [f'{c.ms("list", t):.3f}', f'{c.ratio("list", t):.1f}×']
        row += [' / '.join(f'{c.ms("packed", t):.3f}' for t in ts),
                f'{c.equal:,}/{c.checked:,}', _memory_cell(c, ts[0])]
        rows.append(row)
    return _table(head, rows)


def _coco_table(coco: List[Case], cases: List[Case], args) -> List[str]:
    """The COCO-val-sized load: seconds of one call, ensemble-boxes extrapolated."""
    ts, c0 = args.threads, coco[0]
    lines = ['', f'COCO-val-sized load, fused in one call: {c0.images:,} images × '
             f'{args.members} members × ≤ {args.boxes} boxes ({c0.total_boxes:,} boxes); '
             f'its first {min(args.images, c0.images):,} images are the load above.', '']
    head = ['method'] + [f'{api} API, {threads_label(t)}, s' for api in APIS for t in ts]
    head += ['ensemble-boxes, extrapolated, s', 'outputs equal',
             f'peak memory, mmens {threads_label(ts[0])} (list / packed)']
    main_ref = {c.method: c.ref_ms for c in cases if c.boxes == args.boxes}
    rows = []
    for c in coco:
        ref = main_ref.get(c.method)
        rows.append([METHODS[c.method][1]]
                    + [f'{c.secs[api, t]:.2f}' for api in APIS for t in ts]
                    + [f'{ref * c.images / 1e3:.1f}' if ref else '',
                       f'{c.equal:,}/{c.checked:,}', _memory_cell(c, ts[0])])
    return lines + _table(head, rows)


def markdown(cases: List[Case], coco: List[Case], args, argv, wall: float) -> str:
    """The results as Markdown tables (pasted into docs/benchmarks.md and the README
    speed table)."""
    lines = _intro(args, argv, wall) + _loads_table(cases, args.threads)
    if coco:
        lines += _coco_table(coco, cases, args)
    return '\n'.join(lines)
