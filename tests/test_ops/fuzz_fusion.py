"""Seeded fuzzing of the 13 public fusion entry points on both backends.

``python tests/test_ops/fuzz_fusion.py --cases 2400 --seed 0`` draws small
random inputs, spoils about two thirds of them with one mistake from a
catalogue (extreme and fractional labels, NaN/inf anywhere, wrong dtypes,
``None`` members, ragged lists, bad parameters, negative or fractional
counts, ...; some "mistakes" are valid extremes), calls one entry point on
the kernel and on the pure-torch path, and checks that

* valid input runs on both backends and gives equal output (exact; soft-NMS
  decayed scores within the rounding of kernel.py's numerical contract);
* invalid input raises, on both backends, the same ValueError or TypeError,
  with a one-line message.

It prints one JSON summary line and exits 1 on any failure. It runs as a
script (``tests/test_ops/test_fuzz_fusion.py`` starts it in a subprocess) so
that a crash of the process fails a test instead of killing pytest; ``make
sanitize`` runs it under AddressSanitizer and UBSan.
"""
import argparse
import json
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

import mmens.ops as mo
from mmens.ops import kernel

LIST = {
    'wbf': mo.weighted_boxes_fusion,
    'nms': mo.nms,
    'soft_nms': mo.soft_nms,
    'nmw': mo.non_maximum_weighted,
}
BATCH = {
    'wbf': mo.weighted_boxes_fusion_batch,
    'nms': mo.nms_batch,
    'soft_nms': mo.soft_nms_batch,
    'nmw': mo.non_maximum_weighted_batch,
}
PACKED = dict(mo.FUSION_METHODS, match_boxes=mo.match_boxes)
ENTRIES = ([('list', m) for m in LIST] + [('batch', m) for m in BATCH] +
           [('packed', m) for m in PACKED])
NAN, INF = float('nan'), float('inf')


# ----------------------------------------------------------------- inputs
def draw_images(rng: np.random.Generator) -> List[List[list]]:
    """1-3 images of 1-3 members with 0-6 boxes each; ties, zero scores,
    boxes slightly outside [0, 1] and zero-area boxes included (valid)."""
    n_img, n_mem = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    label_dtype = rng.choice([np.int64, np.float64, np.int32])
    images = []
    for _ in range(n_img):
        bl, sl, ll = [], [], []
        for _ in range(n_mem):
            k = int(rng.integers(0, 7)) if rng.random() < 0.8 else 0
            xy = rng.random((k, 2)) * 0.7
            wh = rng.random((k, 2)) * 0.3 + 0.01
            b = np.concatenate([xy, xy + wh], 1)
            if k and rng.random() < 0.2:
                b[0] = np.round(b[0] * 4) / 4 - 0.05  # may leave [0, 1]
                b[0, 2:] = np.maximum(b[0, 2:], b[0, :2])  # may be zero-area
            s = rng.random(k)
            if k and rng.random() < 0.3:
                s = np.round(s * 4) / 4  # ties and zeros
            lab = rng.integers(0, 3, k).astype(label_dtype)
            bl.append(b)
            sl.append(s)
            ll.append(lab)
        images.append([bl, sl, ll])
    return images


def draw_params(rng: np.random.Generator, method: str) -> Dict[str, Any]:
    """Valid parameters of ``method`` (random, including the bounds)."""
    unit = lambda: float(rng.choice([0.0, 1.0, rng.random(), 0.55]))  # noqa
    p: Dict[str, Any] = dict(iou_thr=unit())
    if method in ('wbf', 'match_boxes', 'nmw'):
        p['skip_box_thr'] = float(rng.choice([0.0, rng.random() * 0.5]))
    if method in ('wbf', 'match_boxes'):
        p['conf_type'] = str(rng.choice(mo.CONF_TYPES))
        p['allows_overflow'] = bool(rng.random() < 0.5)
    if method == 'match_boxes':
        p['member_reduce'] = str(rng.choice(['mean', 'best']))
    if method == 'soft_nms':
        p['method'] = int(rng.integers(1, 4))
        p['sigma'] = float(rng.choice([0.5, rng.random() + 1e-3]))
        p['thresh'] = float(rng.choice([0.0, 0.001, rng.random() * 0.3]))
        p['return_decayed_scores'] = bool(rng.random() < 0.5)
    return p


def pack(images: List[List[list]], rng: np.random.Generator) -> dict:
    """The fields of a PackedDetections of ``images`` (valid lists)."""
    n_mem = len(images[0][0])
    parts: Dict[str, list] = dict(b=[], s=[], lab=[], m=[], i=[])
    for i, (bl, sl, ll) in enumerate(images):
        for t in range(n_mem):
            parts['b'].append(np.asarray(bl[t], np.float64).reshape(-1, 4))
            parts['s'].append(np.asarray(sl[t], np.float64))
            parts['lab'].append(np.asarray(ll[t]))
            parts['m'].append(np.full(len(sl[t]), t))
            parts['i'].append(np.full(len(sl[t]), i))
    dt = torch.float32 if rng.random() < 0.3 else torch.float64
    cat = lambda k: np.concatenate(parts[k]) if parts[k] else np.zeros(0)  # noqa
    lab = cat('lab')
    return dict(boxes=torch.from_numpy(np.concatenate(parts['b'])).to(dt)
                if parts['b'] else torch.zeros(0, 4, dtype=dt),
                scores=torch.from_numpy(cat('s')).to(dt),
                labels=torch.from_numpy(lab.astype(
                    np.int64 if lab.dtype.kind in 'iu' else np.float64)),
                members=torch.from_numpy(cat('m').astype(np.int64)),
                images=torch.from_numpy(cat('i').astype(np.int64))
                if len(images) > 1 or rng.random() < 0.5 else None,
                num_members=n_mem, num_images=len(images))


# -------------------------------------------------------------- mistakes
# Each: (name, forms, valid, fn(rng, case)); forms: 'l' list/batch, 'p'
# packed, 'lp' both. `case` has 'images' (lists, before packing), 'params'
# and, for packed forms, 'dets' (fields, after packing; `post` mutations).
Mutation = Tuple[str, str, bool, Callable, bool]


def _member(rng, case):
    """A random (image, member) with at least one box, or None."""
    cands = [(i, t) for i, img in enumerate(case['images'])
             for t in range(len(img[0])) if len(img[1][t])]
    return cands[int(rng.integers(len(cands)))] if cands else None


def set_value(field: int, value, valid: bool, col: Optional[int] = None):
    """Set one entry of boxes (field 0; column ``col``), scores (1) or
    labels (2) of a random non-empty member to ``value``."""

    def fn(rng, case):
        it = _member(rng, case)
        if it is None:
            return False  # nothing to spoil
        i, t = it
        arr = np.array(case['images'][i][field][t], dtype=np.float64
                       if field < 2 or isinstance(value, float) else None)
        if field == 2 and isinstance(value, int):
            arr = arr.astype(np.int64)
        j = int(rng.integers(len(arr)))
        if field == 0:
            arr[j, int(rng.integers(4)) if col is None else col] = value
        else:
            arr[j] = value
        case['images'][i][field][t] = arr
        return True

    return fn


def replace_member(field: int, make: Callable):
    def fn(rng, case):
        i = int(rng.integers(len(case['images'])))
        t = int(rng.integers(len(case['images'][i][0])))
        case['images'][i][field][t] = make(case['images'][i][field][t])
        return True

    return fn


def set_param(name: str, value):
    """Set a parameter the entry point has; a callable ``value`` gets the
    number of members."""

    def fn(rng, case):
        if name not in case['params'] and name != 'weights':
            return False
        n = len(case['images'][0][0])
        case['params'][name] = value(n) if callable(value) else value
        return True

    return fn


def set_field(name: str, make: Callable):
    def fn(rng, case):
        d = case['dets']
        got = make(d.get(name), d)
        if got is None:
            return False
        d[name] = got
        return True

    return fn


def _flip_x(b):
    """x2 < x1 in the first box (an empty member gets one such box, which
    also breaks its lengths)."""
    b = np.array(b, np.float64).reshape(-1, 4)
    if not len(b):
        b = np.array([[0.2, 0.2, 0.5, 0.5]])
    b[0, [0, 2]] = [0.9, 0.1]
    return b


def _bump(t, d, delta):
    if t is None or not len(t):
        return None
    t = t.clone()
    t[-1] = delta(t[-1], d)
    return t


MUTATIONS: List[Mutation] = [
    # labels: extreme, fractional, non-finite (values, on both forms)
    ('label 1e19', 'lp', False, set_value(2, 1e19, False), False),
    ('label 2**53', 'lp', False, set_value(2, 2**53, False), False),
    ('label int64 min', 'lp', False, set_value(2, -2**63, False), False),
    ('label int64 max', 'lp', False, set_value(2, 2**63 - 1, False), False),
    ('label 1e300', 'lp', False, set_value(2, 1e300, False), False),
    ('label 0.5', 'lp', False, set_value(2, 0.5, False), False),
    ('label nan', 'lp', False, set_value(2, NAN, False), False),
    ('label -inf', 'lp', False, set_value(2, -INF, False), False),
    ('label 2**53-1', 'lp', True, set_value(2, 2**53 - 1, True), False),
    ('label -(2**53-1)', 'lp', True, set_value(2, -(2**53 - 1), True), False),
    ('label 2**40 float', 'lp', True, set_value(2, 2.0**40, True), False),
    ('label -7', 'lp', True, set_value(2, -7, True), False),
    # boxes and scores: NaN / inf / order / range
    ('box nan', 'lp', False, set_value(0, NAN, False), False),
    ('box inf', 'lp', False, set_value(0, INF, False), False),
    ('box -inf', 'lp', False, set_value(0, -INF, False), False),
    ('box x2 < x1', 'lp', False, replace_member(0, _flip_x), False),
    ('box x2 1e30', 'lp', True, set_value(0, 1e30, True, col=2), False),
    ('score nan', 'lp', False, set_value(1, NAN, False), False),
    ('score inf', 'lp', False, set_value(1, INF, False), False),
    ('score 1.5', 'lp', False, set_value(1, 1.5, False), False),
    ('score -0.1', 'lp', False, set_value(1, -0.1, False), False),
    ('score 0', 'lp', True, set_value(1, 0.0, True), False),
    # list structure and dtypes
    ('boxes None member', 'l', False, replace_member(0, lambda x: None), False),
    ('scores None member', 'l', False, replace_member(1, lambda x: None),
     False),
    ('labels None member', 'l', False, replace_member(2, lambda x: None),
     False),
    ('string boxes', 'l', False,
     replace_member(0, lambda x: [['a', 'b', 'c', 'd']]), False),
    ('string labels', 'l', False,
     replace_member(2, lambda x: np.asarray(x).astype(str)), False),
    ('ragged boxes', 'l', False,
     replace_member(0, lambda x: [[.1, .1, .2, .2], [.1, .2]]), False),
    ('bool scores', 'l', False,
     replace_member(1, lambda x: np.ones(len(x), bool)), False),
    ('complex scores', 'l', False,
     replace_member(1, lambda x: np.asarray(x) + 0j), False),
    ('object scores', 'l', False,
     replace_member(1, lambda x: np.array([None] * max(len(x), 1))), False),
    ('0-d scores', 'l', False, replace_member(1, lambda x: np.float64(0.5)),
     False),
    ('2-d scores', 'l', False,
     replace_member(1, lambda x: np.asarray(x).reshape(-1, 1)[:, [0, 0]]
                    if len(x) else np.zeros((1, 2))), False),
    ('boxes 3 cols', 'l', False,
     replace_member(0, lambda x: np.zeros((2, 3)) + .1), False),
    ('one score too many', 'l', False,
     replace_member(1, lambda x: np.append(np.asarray(x, float), 0.5)),
     False),
    ('boxes as list', 'l', True,
     replace_member(0, lambda x: np.asarray(x).tolist()), False),
    ('uint8 labels', 'l', True,
     replace_member(2, lambda x: np.asarray(x).astype(np.uint8)), False),
    ('empty member', 'l', True,
     replace_member(0, lambda x: np.zeros((0, 4))), False),  # fixed below
    # parameters
    ('iou_thr None', 'lp', False, set_param('iou_thr', None), False),
    ('iou_thr nan', 'lp', False, set_param('iou_thr', NAN), False),
    ('iou_thr inf', 'lp', False, set_param('iou_thr', INF), False),
    ('iou_thr 1.5', 'lp', False, set_param('iou_thr', 1.5), False),
    ('iou_thr -0.1', 'lp', False, set_param('iou_thr', -0.1), False),
    ('iou_thr str', 'lp', False, set_param('iou_thr', '0.5'), False),
    ('iou_thr np.float32', 'lp', True, set_param('iou_thr',
                                                 np.float32(0.5)), False),
    ('sigma 0', 'lp', False, set_param('sigma', 0.0), False),
    ('sigma -1', 'lp', False, set_param('sigma', -1.0), False),
    ('sigma nan', 'lp', False, set_param('sigma', NAN), False),
    ('sigma inf', 'lp', False, set_param('sigma', INF), False),
    ('thresh nan', 'lp', False, set_param('thresh', NAN), False),
    ('thresh -1', 'lp', False, set_param('thresh', -1.0), False),
    ('skip_box_thr nan', 'lp', False, set_param('skip_box_thr', NAN), False),
    ('skip_box_thr -1', 'lp', False, set_param('skip_box_thr', -1.0), False),
    ('skip_box_thr inf', 'lp', False, set_param('skip_box_thr', INF), False),
    ('conf_type bad', 'lp', False, set_param('conf_type', 'mean'), False),
    ('method 4', 'lp', False, set_param('method', 4), False),
    ('method 2.0', 'lp', False, set_param('method', 2.0), False),
    ('allows_overflow None', 'lp', False, set_param('allows_overflow', None),
     False),
    ('member_reduce bad', 'p', False, set_param('member_reduce', 'sum'),
     False),
    ('weights one too many', 'lp', False,
     set_param('weights', lambda n: [1.0] * (n + 1)), False),
    ('weights nan', 'lp', False, set_param('weights', lambda n: [NAN] * n),
     False),
    ('weights zero', 'lp', False, set_param('weights', lambda n: [0.] * n),
     False),
    ('weights str', 'lp', False, set_param('weights', lambda n: ['a'] * n),
     False),
    ('weights None entry', 'lp', False,
     set_param('weights', lambda n: [None] * n), False),
    ('weights tensor', 'lp', True,
     set_param('weights', lambda n: torch.rand(n) + 0.5), False),
    # packed fields and counts (applied after packing)
    ('num_images -1', 'p', False, set_field('num_images', lambda x, d: -1),
     True),
    ('num_images 1.5', 'p', False, set_field('num_images', lambda x, d: 1.5),
     True),
    ('num_images True', 'p', False,
     set_field('num_images', lambda x, d: True), True),
    ('num_images str', 'p', False, set_field('num_images', lambda x, d: '1'),
     True),
    ('num_images + 2', 'p', True, set_field('num_images', lambda x, d: x + 2),
     True),
    ('num_members -1', 'p', False,
     set_field('num_members', lambda x, d: -1), True),
    ('num_members 2.5', 'p', False,
     set_field('num_members', lambda x, d: 2.5), True),
    ('member out of range', 'p', False,
     set_field('members', lambda x, d: _bump(x, d, lambda v, d: d[
         'num_members'])), True),
    ('member negative', 'p', False,
     set_field('members', lambda x, d: _bump(x, d, lambda v, d: -1)), True),
    ('image out of range', 'p', False,
     set_field('images', lambda x, d: _bump(x, d, lambda v, d: d[
         'num_images'])), True),
    ('float members', 'p', False,
     set_field('members', lambda x, d: x.double()), True),
    ('short scores', 'p', False,
     set_field('scores', lambda x, d: x[:-1] if len(x) else None), True),
    ('boxes [M, 3]', 'p', False,
     set_field('boxes', lambda x, d: x[:, :3] if len(x) else None), True),
    ('string boxes array', 'p', False,
     set_field('boxes', lambda x, d: np.full((len(x), 4), 'a')), True),
    ('labels as numpy', 'p', True,
     set_field('labels', lambda x, d: x.numpy()), True),
    ('dets a dict', 'p', False, set_field('_dets_type', lambda x, d: dict),
     True),
]


def apply(rng, case, form: str) -> Tuple[str, bool]:
    """Spoil ``case`` with one applicable mistake; ('', True) for none."""
    if rng.random() < 0.33:
        return '', True
    f = 'p' if form == 'packed' else 'l'
    pool = [m for m in MUTATIONS if f in m[1]]
    for _ in range(8):
        name, _, valid, fn, post = pool[int(rng.integers(len(pool)))]
        if name == 'empty member':  # make a whole member empty
            i = int(rng.integers(len(case['images'])))
            t = int(rng.integers(len(case['images'][i][0])))
            for k, shape in enumerate(((0, 4), (0, ), (0, ))):
                case['images'][i][k][t] = np.zeros(shape)
            return name, True
        if post:
            case.setdefault('post', []).append(fn)
            return name, valid
        if fn(rng, case):
            return name, valid
    return '', True


def pack_packed(rng, case) -> None:
    """Pack the (already spoilt) lists into ``case['dets_fields']``."""
    case['dets_fields'] = pack(case['images'], rng)


def add_image_sizes(case) -> None:
    """Scale the boxes to 640 x 480 pixels and pass ``image_sizes``."""
    d = case['dets_fields']
    b = d['boxes']
    if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
        return
    n = d['num_images']
    n = n if type(n) is int and n >= 0 else 1
    case['params']['image_sizes'] = torch.tensor([[640.0, 480.0]]).repeat(
        n, 1)
    d['boxes'] = b * torch.tensor([640.0, 480.0] * 2).to(b.dtype)


# --------------------------------------------------------------- running
def call(form: str, method: str, case: dict, rng_seed: int):
    """Run the entry point on ``case`` (a fresh copy of its input)."""
    params = dict(case['params'])
    images = [[list(x) for x in img] for img in case['images']]
    if form == 'list':
        return LIST[method](*images[0], **params)
    if form == 'batch':
        return BATCH[method](images, **params)
    d = case['dets_fields']
    dets = mo.PackedDetections(d['boxes'], d['scores'], d['labels'],
                               d['members'], d['images'], d['num_members'],
                               d['num_images'])
    if d.get('_dets_type') is dict:
        dets = dets._asdict()
    return PACKED[method](dets, **params)


def same(a, b, decayed: bool) -> bool:
    """Equal outputs; decayed soft-NMS scores within 1e-14 relative."""
    if isinstance(a, list):  # per image
        return (type(b) is list and len(a) == len(b)
                and all(same(x, y, decayed) for x, y in zip(a, b)))
    if isinstance(a, tuple):  # (boxes, scores, ...): scores decayed
        return (type(a) is type(b) and len(a) == len(b) and all(
            same(x, y, decayed and k == 1)
            for k, (x, y) in enumerate(zip(a, b))))
    if isinstance(a, torch.Tensor):
        a, b = a.numpy(), b.numpy()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if decayed and a.dtype.kind == 'f':
        return bool(np.allclose(a, b, rtol=1e-14, atol=0))
    return bool(np.array_equal(a, b))


def run_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    form, method = ENTRIES[int(rng.integers(len(ENTRIES)))]
    case = dict(images=draw_images(rng), params=draw_params(rng, method))
    if form == 'list':
        case['images'] = case['images'][:1]
    if method in ('wbf', 'nms', 'soft_nms', 'nmw') and rng.random() < 0.2:
        case['params']['weights'] = list(rng.random(len(
            case['images'][0][0])) + 0.1)
    if form == 'packed':
        case['params']['class_agnostic'] = bool(rng.random() < 0.3)
    name, valid = apply(rng, case, form)
    if form == 'packed':
        pack_packed(rng, case)
        for fn in case.get('post', []):
            case['dets'] = case['dets_fields']
            if not fn(rng, case):
                name, valid = '', True
        if rng.random() < 0.15:  # pixel boxes and image sizes
            add_image_sizes(case)
    out, err = {}, {}
    for be in ('cpp', 'torch'):
        with kernel.backend(be):
            try:
                out[be] = call(form, method, case, seed)
            except Exception as e:  # noqa: BLE001 (compared below)
                err[be] = e
    res = dict(seed=seed, entry=f'{form}:{method}', mistake=name,
               valid=valid, failure='')
    if err:
        types = {be: type(e).__name__ for be, e in err.items()}
        msgs = [str(e) for e in err.values()]
        if len(err) == 1:
            res['failure'] = f'only {types} raised: {msgs[0][:200]}'
        elif types['cpp'] != types['torch']:
            res['failure'] = f'different errors {types}: {msgs}'
        elif valid:
            res['failure'] = f'valid input raised {types}: {msgs[0][:200]}'
        elif types['cpp'] not in ('ValueError', 'TypeError'):
            res['failure'] = f'mistake raised {types}: {msgs[0][:200]}'
        elif any('\n' in m for m in msgs):
            res['failure'] = f'error message of several lines: {msgs[0]}'
        res['raised'] = types['cpp']
    else:
        decayed = bool(case['params'].get('return_decayed_scores'))
        if not valid:
            res['failure'] = 'the mistake was accepted'
        elif not same(out['cpp'], out['torch'], decayed):
            res['failure'] = 'outputs differ between backends'
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cases', type=int, default=2400)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)
    warnings.simplefilter('ignore')
    torch.set_num_threads(1)
    stats: Dict[str, Any] = dict(cases=0, valid=0, invalid=0, skipped=0,
                                 kernel=getattr(kernel._ext, '__file__', None),
                                 entries={}, mistakes={}, failures=[])
    for k in range(args.cases):
        r = run_case(args.seed * 1_000_003 + k)
        if r.get('skipped'):
            stats['skipped'] += 1
            continue
        stats['cases'] += 1
        stats['valid' if r['valid'] else 'invalid'] += 1
        stats['entries'][r['entry']] = stats['entries'].get(r['entry'], 0) + 1
        if r['mistake']:
            stats['mistakes'][r['mistake']] = stats['mistakes'].get(
                r['mistake'], 0) + 1
        if r['failure']:
            stats['failures'].append(
                {k: r[k] for k in ('seed', 'entry', 'mistake', 'failure')})
    print(json.dumps(stats))
    return 1 if stats['failures'] else 0


if __name__ == '__main__':
    sys.exit(main())
