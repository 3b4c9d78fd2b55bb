"""The one input contract of the fusion ops, checked before any kernel call.

Every public fusion entry point (the list, ``*_batch`` and ``*_packed``
forms of WBF, NMS, soft-NMS and NMW, and :func:`~mmens.ops.match_boxes`)
goes through :func:`validate_fusion` (the list forms first through
:func:`member_arrays`, which turns the per-member lists into arrays), on
both backends. So a mistake raises the same error on the compiled kernel
and on the pure-torch path, and the kernel only ever sees input it can
handle. ensemble-boxes prints a message and calls ``exit()`` on malformed
input, and silently swaps / clips other defects. Here:

* a wrong type raises :class:`TypeError` and a wrong value
  :class:`ValueError`, in one line naming the argument or field and, for a
  box, its member, its index within that member's list and (in batch calls)
  its image: a member that is ``None`` or holds strings, a ragged list,
  different list lengths, a box that is not 4 numbers, NaN/inf coordinates
  or scores, ``x2 < x1`` / ``y2 < y1`` (ensemble-boxes swaps them; we
  refuse), scores outside ``[0, 1]``, labels that are not integers of
  magnitude below :data:`LABEL_LIMIT`, member or image indices out of range,
  bad weights, and parameters out of their range (:func:`check_params`);
* coordinates outside ``[0, 1]`` are clipped exactly like ensemble-boxes does,
  with one :func:`warnings.warn` that counts the clipped boxes;
* zero-area boxes (after clipping) are skipped like ensemble-boxes does, with
  one :func:`warnings.warn` that counts them.

The counts cover every input box (ensemble-boxes' WBF only looks at boxes
whose score passed ``skip_box_thr``). Nothing here imports mmdet/mmcv, so the
dataset layer can reuse it.
"""
import math
import numbers
from collections import abc
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .packed import PackedDetections, Repair

__all__ = [
    'CONF_TYPES', 'LABEL_LIMIT', 'check_member_lists', 'check_packed',
    'check_params', 'check_weights', 'member_arrays', 'member_sizes',
    'repair_boxes', 'validate_fusion'
]

CONF_TYPES = ('avg', 'max', 'box_and_model_avg', 'absent_model_aware_avg')

#: Labels must satisfy ``|label| < LABEL_LIMIT``: every such integer is exact
#: in float64 (the list API's label dtype, like ensemble-boxes') and in
#: int64, and the span of any two of them fits in int64.
LABEL_LIMIT = 2**53


def _where(member: int, box: Optional[int], image: Optional[int]) -> str:
    parts = [] if image is None else [f'image {image}']
    parts.append(f'member {member}')
    if box is not None:
        parts.append(f'box {box}')
    return ', '.join(parts)


def _real(name: str, x: Any) -> float:
    """``x`` as a float; a TypeError unless it is a real number."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f'{name} must be a real number, got '
                        f'{type(x).__name__} {x!r}')
    return float(x)


def _param_rules():
    """``name -> check(value)`` of every fusion parameter."""

    def unit(name, x):
        v = _real(name, x)
        if not 0 <= v <= 1:  # NaN fails too
            raise ValueError(f'{name} must be in [0, 1], got {x!r}')

    def nonneg(name, x):
        v = _real(name, x)
        if not 0 <= v < math.inf:
            raise ValueError(f'{name} must be finite and >= 0, got {x!r}')

    def positive(name, x):
        v = _real(name, x)
        if not 0 < v < math.inf:
            raise ValueError(f'{name} must be finite and > 0, got {x!r}')

    def flag(name, x):
        if not isinstance(x, (bool, np.bool_)):
            raise TypeError(f'{name} must be a bool, got {type(x).__name__} '
                            f'{x!r}')

    def choice(options):

        def check(name, x):
            if (not isinstance(x, (str, numbers.Integral))
                    or isinstance(x, (bool, np.bool_)) or x not in options):
                raise ValueError(f'{name} must be one of {options}, got {x!r}')

        return check

    return dict(iou_thr=unit, skip_box_thr=nonneg, thresh=nonneg,
                sigma=positive, conf_type=choice(CONF_TYPES),
                method=choice((1, 2, 3)), member_reduce=choice(('mean',
                                                                'best')),
                allows_overflow=flag, class_agnostic=flag,
                return_decayed_scores=flag)


_RULES = _param_rules()


def check_params(**params) -> None:
    """Check the scalar parameters of a fusion op.

    ``iou_thr`` a real number in ``[0, 1]``; ``skip_box_thr`` and ``thresh``
    finite and ``>= 0``; ``sigma`` finite and ``> 0``; ``conf_type`` one of
    :data:`CONF_TYPES`; ``method`` 1, 2 or 3; ``member_reduce`` ``'mean'``
    or ``'best'``; ``allows_overflow``, ``class_agnostic`` and
    ``return_decayed_scores`` bools.

    Raises:
        TypeError: a parameter of the wrong type (``None``, a string for a
            number, ...), naming it.
        ValueError: a parameter out of its range (NaN included), naming it.
    """
    for name, value in params.items():
        _RULES[name](name, value)


def _count(name: str, x: Any) -> int:
    """A non-negative integer count (``num_members`` / ``num_images``)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f'{name} must be an int, got {type(x).__name__} '
                        f'{x!r}')
    if x < 0:
        raise ValueError(f'{name} must be >= 0, got {x}')
    return int(x)


def _numeric(x: Any, what: str) -> Any:
    """``x`` as a real-valued NumPy array or tensor (uint64 as int64)."""
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f'{what} must hold real numbers, got {x.dtype}')
        return x
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):  # ragged nested lists
        raise ValueError(f'{what} is a ragged list, not an array') from None
    if a.dtype.kind not in 'iuf':
        got = type(x).__name__ if a.dtype == object else a.dtype
        raise TypeError(f'{what} must hold real numbers, got {got}')
    if a.dtype.kind == 'u' and a.dtype.itemsize == 8:
        if a.size and a.max() >= 2**63:
            raise ValueError(f'{what} has a value >= 2**63')
        a = a.astype(np.int64)
    return a


def _is_list(x: Any) -> bool:
    """A list of per-member arrays (a list or tuple first: the ABC check of
    the general case costs a microsecond per call, per image)."""
    return type(x) in (list, tuple) or (isinstance(
        x, (abc.Sequence, np.ndarray, Tensor)) and not isinstance(x, str))


def member_arrays(lists: List[Any], field: str, num_members: int,
                  report_image: bool) -> List[Any]:
    """The per-member arrays of one field, type-checked.

    Args:
        lists (list): one array-like per ``(image, member)``, image-major.
        field (str): ``'boxes'``, ``'scores'`` or ``'labels'`` (for errors).
        num_members (int): ``N``, to name image and member in errors.
        report_image (bool): name the image in errors (batch calls).

    Returns:
        list: tensors as given, everything else as NumPy arrays, all of
        real numbers.

    Raises:
        TypeError: a member is ``None``, holds strings, bools or objects.
        ValueError: a member is a ragged list.
    """
    if not any(issubclass(t, Tensor) for t in {type(x) for x in lists}):
        try:  # fast path: one asarray each, one dtype check per dtype
            arrs = [np.asarray(x) for x in lists]
            if all(d.kind in 'iuf' and d != np.uint64
                   for d in {a.dtype for a in arrs}):
                return arrs
        except (ValueError, TypeError):  # ragged: named below
            pass
    n = max(num_members, 1)
    return [
        _numeric(x, f"{_where(j % n, None, j // n if report_image else None)}"
                 f": field '{field}'") for j, x in enumerate(lists)
    ]


def check_member_lists(boxes_list: Sequence,
                       scores_list: Sequence,
                       labels_list: Sequence,
                       image: Optional[int] = None) -> int:
    """Check the per-member lists of one image are lists of equal length.

    Args:
        boxes_list (Sequence[array[n_i, 4]]): boxes of each member.
        scores_list (Sequence[array[n_i]]): scores of each member.
        labels_list (Sequence[array[n_i]]): labels of each member.
        image (int, optional): image index, named in the error of batch calls.

    Returns:
        int: number of members.

    Raises:
        TypeError: a field is not a list (e.g. ``None``).
        ValueError: on a length mismatch, naming image and field.
    """
    img = '' if image is None else f'image {image}: '
    for name, lst in (('boxes', boxes_list), ('scores', scores_list),
                      ('labels', labels_list)):
        if not _is_list(lst):
            raise TypeError(f"{img}field '{name}' must be a list with one "
                            f'array per member, got {type(lst).__name__}')
    n = len(boxes_list)
    for name, lst in (('scores', scores_list), ('labels', labels_list)):
        if len(lst) != n:
            raise ValueError(f"{img}field '{name}' has {len(lst)} members but "
                             f"field 'boxes' has {n}")
    return n


def member_sizes(boxes: List[Any], scores: List[Any], labels: List[Any],
                 num_members: int, report_image: bool) -> List[int]:
    """Box counts of every ``(image, member)`` (image-major lists).

    A member's boxes are ``[n, 4]`` (any shape when empty), its scores and
    labels ``[n]``.

    Raises:
        ValueError: the first member (image-major) breaking that, naming
            image, member and field.
    """
    shapes = [tuple(b.shape) for b in boxes]
    sizes = [sh[0] if len(sh) == 2 and sh[1] == 4 else 0 for sh in shapes]
    want = [(s, ) for s in sizes]
    if ([x.shape for x in scores] == want and [x.shape for x in labels] == want
            and all(s or 0 in sh for s, sh in zip(sizes, shapes))):
        return sizes
    n = max(num_members, 1)
    for j, sh in enumerate(shapes):  # slow path: name the first culprit
        i, t = divmod(j, n)
        where = _where(t, None, i if report_image else None)
        if 0 not in sh and (len(sh) != 2 or sh[1] != 4):
            raise ValueError(f"{where}: field 'boxes' must be [n, 4], got "
                             f'shape {sh}')
        for name, x in (('scores', scores[j]), ('labels', labels[j])):
            xs = tuple(x.shape)
            if len(xs) != 1 and not (sizes[j] == 0 and 0 in xs):
                raise ValueError(f"{where}: field '{name}' must be 1-d, got "
                                 f'shape {xs}')
            if xs[0] != sizes[j] and not (sizes[j] == 0 and 0 in xs):
                raise ValueError(
                    f"{where}: field '{name}' has {xs[0]} entries but field "
                    f"'boxes' has {sizes[j]}")
    return sizes


def check_weights(weights, num_members: int, device: torch.device) -> Tensor:
    """Validate member weights and return them as float64.

    Args:
        weights (Sequence[float] | Tensor[N] | None): one positive finite
            weight per member; ``None`` means all ones.
        num_members (int): ``N``.
        device (torch.device): device of the returned tensor.

    Returns:
        Tensor[N]: float64 weights.

    Raises:
        TypeError: weights that are not real numbers.
        ValueError: wrong length, non-finite or non-positive weight.
            (ensemble-boxes prints a warning and uses ones for a wrong
            length; zero/negative weights make it divide by zero.)
    """
    if weights is None:
        return torch.ones(num_members, dtype=torch.float64, device=device)
    w = _numeric(weights, "field 'weights'")
    w = torch.as_tensor(w).to(device, torch.float64).reshape(-1)
    if w.numel() != num_members:
        raise ValueError(f"field 'weights' has {w.numel()} entries, expected "
                         f'one per member ({num_members})')
    bad = ~torch.isfinite(w) | (w <= 0)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        raise ValueError(f"member {t}: field 'weights' must be finite and > 0,"
                         f' got {float(w[t])}')
    return w


def _packed_fields(dets: Any) -> PackedDetections:
    """``dets`` as a :class:`PackedDetections` of tensors on one device, with
    clean type errors (real boxes, scores and labels, long members/images)."""
    if not isinstance(dets, tuple) or len(dets) not in (6, 7):
        raise TypeError('dets must be a PackedDetections, got '
                        f'{type(dets).__name__}')
    boxes, scores, labels, members, images, n, i = PackedDetections(*dets)
    n, i = _count('num_members', n), _count('num_images', i)
    boxes = torch.as_tensor(_numeric(boxes, "field 'boxes'"))
    dev = boxes.device
    out = [boxes]
    for name, x in (('scores', scores), ('labels', labels),
                    ('members', members), ('images', images)):
        t = None if x is None else torch.as_tensor(
            _numeric(x, f"field '{name}'")).to(dev)
        if name in ('members', 'images') and t is not None:
            if t.is_floating_point():
                raise TypeError(f"field '{name}' must have an integer dtype, "
                                f'got {t.dtype}')
            t = t.long()
        out.append(t)
    if boxes.numel() == 0:
        out[0] = boxes.reshape(-1, 4)
    if out[4] is None:
        out[4] = torch.zeros_like(out[3])
    return PackedDetections(*out, n, i)


def validate_fusion(dets: Any,
                    weights=None,
                    image_sizes=None,
                    report_image: bool = True,
                    **params) -> Tuple[PackedDetections, Tensor,
                                       Optional[Tensor]]:
    """The one check of a fusion op's input, before either backend runs.

    Args:
        dets (PackedDetections): see the class; fields may be tensors or
            NumPy arrays (boxes on any real dtype).
        weights (Tensor[N] | Sequence[float] | None): member weights.
        image_sizes (Tensor[I, 2], optional): ``(width, height)`` per image.
        report_image (bool): name the image in messages (batch calls).
        **params: the op's scalar parameters, see :func:`check_params`.

    Returns:
        tuple: the detections (boxes ``[M, 4]``, scores and labels of their
        given dtypes, long members and images, as tensors on the device of
        ``boxes``),
        float64 weights ``[N]`` and float64 image sizes ``[I, 2]`` (or
        ``None``).

    Raises:
        TypeError, ValueError: see the module doc; one line naming the
        argument, and the member, image and box where relevant.
    """
    check_params(**params)
    if getattr(dets, 'repair', None) is not None and image_sizes is None:
        # checked as the list API packed it (pack_lists.cpp); the weights not
        w = check_weights(weights, dets.num_members, dets.boxes.device)
        return dets, w, None
    dets = _packed_fields(dets)
    check_packed(dets, report_image)
    dev = dets.boxes.device
    w = check_weights(weights, dets.num_members, dev)
    sizes = None
    if image_sizes is not None:
        sizes = torch.as_tensor(_numeric(image_sizes, "field 'image_sizes'"))
        sizes = sizes.to(dev, torch.float64)
        if sizes.shape != (dets.num_images, 2) or not bool(
            (torch.isfinite(sizes) & (sizes > 0)).all()):
            raise ValueError("field 'image_sizes' must be a finite positive "
                             f'[{dets.num_images}, 2] (width, height) tensor')
    return dets, w, sizes


def _first_bad(checks: list, m: int) -> Optional[Tuple[int, int]]:
    """``(check, box)`` of the first failing box (packed order, then check
    order) among ``checks`` of ``(name, bad [M], what)``; ``None`` if none."""
    bad = torch.stack([c[1] for c in checks])  # [num_checks, M]
    any_bad = bad.any(1).tolist()
    if not any(any_bad):
        return None
    first = torch.where(bad, torch.arange(m, device=bad.device), m).amin(1)
    c = min((k for k in range(len(checks)) if any_bad[k]),
            key=lambda k: (int(first[k]), k))
    return c, int(first[c])


def check_packed(dets: PackedDetections, report_image: bool = True) -> None:
    """Validate packed (flat) detections in one vectorised pass.

    Args:
        dets (PackedDetections): the detections as tensors on one device
            (``images`` not ``None``); scores must lie in ``[0, 1]``,
            labels be integers with ``|label| <`` :data:`LABEL_LIMIT`,
            members in ``[0, N)``, images in ``[0, I)``.
        report_image (bool): name the image in messages (batch calls).

    Raises:
        ValueError: on the first offending box (in packed order), naming its
            image, member, index within the member's list and the field.
    """
    boxes, scores, labels, members, images, num_members, num_images = dets
    m = boxes.shape[0]
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"field 'boxes' must have shape [M, 4], got "
                         f'{tuple(boxes.shape)}')
    for name, t in (('scores', scores), ('labels', labels),
                    ('members', members), ('images', images)):
        if t.shape != (m, ):
            raise ValueError(f"field '{name}' must have shape [{m}], got "
                             f'{tuple(t.shape)}')
    if m == 0:
        return
    # fast path: one host sync; aminmax propagates NaN, so NaN fails too;
    # integrality is checked only for float labels (no float copy of
    # integer labels: the temporaries of a large batch cost page faults)
    lab = labels if labels.is_floating_point() else None
    stats = [
        boxes.aminmax(), scores.aminmax(),
        members.aminmax(), images.aminmax(),
        labels.aminmax()
    ]
    vals = torch.stack([v.double() for mm in stats for v in mm] + [
        (boxes[:, 2:] >= boxes[:, :2]).all().double(),
        torch.ones((), dtype=torch.float64, device=boxes.device)
        if lab is None else (lab == lab.trunc()).all().double()
    ])
    v = vals.tolist()
    inf, lim = float('inf'), float(LABEL_LIMIT)
    if (-inf < v[0] and v[1] < inf and 0 <= v[2] and v[3] <= 1
            and 0 <= v[4] and v[5] < num_members and 0 <= v[6]
            and v[7] < num_images and -lim < v[8] and v[9] < lim
            and v[10] == 1 and v[11] == 1):
        return
    checks = [
        ('members', (members < 0) | (members >= num_members),
         f'must be in [0, {num_members})'),
        ('images', (images < 0) | (images >= num_images),
         f'must be in [0, {num_images})'),
        ('boxes', ~torch.isfinite(boxes).all(1), 'is NaN or infinite'),
        ('scores', ~torch.isfinite(scores), 'is NaN or infinite'),
        ('scores', (scores < 0) | (scores > 1), 'is outside [0, 1]'),
        ('boxes', boxes[:, 2] < boxes[:, 0], 'has x2 < x1'),
        ('boxes', boxes[:, 3] < boxes[:, 1], 'has y2 < y1'),
        ('labels', torch.zeros_like(members, dtype=torch.bool) if lab is None
         else ~torch.isfinite(lab) | (lab != lab.trunc()), 'is not an integer'),
        ('labels', (labels <= -LABEL_LIMIT) | (labels >= LABEL_LIMIT),
         'is not within (-2**53, 2**53)'),
    ]
    found = _first_bad(checks, m)
    if found is None:
        return
    c, k = found
    name, _, what = checks[c]
    if name in ('members', 'images'):
        raise ValueError(
            f"box {k}: field '{name}' {what}, got "
            f'{int((members if name == "members" else images)[k])}')
    mem, img = int(members[k]), int(images[k])
    local = int(((members[:k] == mem) & (images[:k] == img)).sum())
    value = {'boxes': boxes, 'scores': scores, 'labels': labels}[name][k]
    raise ValueError(
        f"{_where(mem, local, img if report_image else None)}: field "
        f"'{name}' {what}: {value.tolist()}")


def repair_boxes(boxes: Tensor,
                 members: Optional[Tensor] = None,
                 done: Optional[Repair] = None) -> Tuple[Tensor, Tensor]:
    """Clip normalised boxes to ``[0, 1]`` and flag zero-area boxes.

    Mirrors ensemble-boxes' ``prefilter_boxes`` / ``prepare_boxes`` repair
    (clip each coordinate, then drop boxes with ``(x2-x1)*(y2-y1) == 0``),
    but warns once per call with counts instead of once per box.

    Args:
        boxes (Tensor[M, 4]): normalised boxes (already validated).
        members (Tensor[M], optional): member of each box, to break the
            counts down per member in the warning.
        done (Repair, optional): the repair, made already (the list API's
            packer clips as it packs): only its warnings are left to give.

    Returns:
        tuple[Tensor[M, 4], Tensor[M]]: clipped boxes and a bool mask of
        boxes with non-zero area (the ones to keep).
    """
    if done is not None:
        _warn_repairs(done.clipped.tolist(), done.zero_area.tolist())
        return boxes, done.keep
    if boxes.numel() == 0:
        return boxes, torch.ones(0, dtype=torch.bool, device=boxes.device)
    lo, hi = boxes.aminmax()
    clip = bool(lo < 0) or bool(hi > 1)
    clipped = boxes.clamp(0, 1) if clip else boxes  # [M, 4]
    keep = (clipped[:, 2:] - clipped[:, :2]).prod(1) != 0  # [M] area != 0
    if clip:
        outside = ((boxes < 0) | (boxes > 1)).any(1)  # [M]
        n_out, n_zero = torch.stack((outside.sum(), (~keep).sum())).tolist()
    else:
        n_out, n_zero = 0, int((~keep).sum())

    def per_member(mask: Tensor) -> Optional[List[int]]:
        return None if members is None else torch.bincount(
            members[mask]).tolist()

    if n_out:
        boxes = clipped
    _warn_repairs(per_member(outside) if n_out else [],
                  per_member(~keep) if n_zero else [], n_out, n_zero)
    return boxes, keep


def _warn_repairs(clipped: Optional[List[int]],
                  zero_area: Optional[List[int]],
                  n_out: Optional[int] = None,
                  n_zero: Optional[int] = None) -> None:
    """The warnings of :func:`repair_boxes`: boxes clipped and boxes of zero
    area, with their counts per member (lists, ``None``: no member break-down;
    the totals default to their sums)."""

    def per_member(cnt: Optional[List[int]]) -> str:
        if cnt is None:
            return ''
        d = {i: c for i, c in enumerate(cnt) if c}
        return f' (per member: {d})'

    n_out = sum(clipped) if n_out is None else n_out
    n_zero = sum(zero_area) if n_zero is None else n_zero
    if n_out:
        warnings.warn(
            f'mmens: clipped {n_out} box(es) with coordinates outside [0, 1]'
            f'{per_member(clipped)}; check that boxes are normalised',
            stacklevel=4)
    if n_zero:
        warnings.warn(
            f'mmens: skipped {n_zero} zero-area box(es)'
            f'{per_member(zero_area)}',
            stacklevel=4)
