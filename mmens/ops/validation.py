"""Vectorised input validation and repair shared by the fusion ops.

ensemble-boxes prints a message and calls ``exit()`` on malformed input, and
silently swaps / clips other defects. Here:

* malformed input raises :class:`ValueError` whose message names the member
  index, the image index (in batch calls), the box index within that
  member's list and the offending field: different list lengths, a box that
  is not 4 numbers, NaN/inf coordinates or scores, ``x2 < x1`` / ``y2 < y1``
  (ensemble-boxes swaps them; we refuse), scores outside ``[0, 1]``,
  non-integral labels, bad weights;
* coordinates outside ``[0, 1]`` are clipped exactly like ensemble-boxes does,
  with one :func:`warnings.warn` that counts the clipped boxes;
* zero-area boxes (after clipping) are skipped like ensemble-boxes does, with
  one :func:`warnings.warn` that counts them.

The counts cover every input box (ensemble-boxes' WBF only looks at boxes
whose score passed ``skip_box_thr``). Nothing here imports mmdet/mmcv, so the
dataset layer can reuse it.
"""
import warnings
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .packed import PackedDetections

__all__ = [
    'check_member_lists', 'check_packed', 'check_weights', 'repair_boxes'
]


def _where(member: int, box: Optional[int], image: Optional[int]) -> str:
    parts = [] if image is None else [f'image {image}']
    parts.append(f'member {member}')
    if box is not None:
        parts.append(f'box {box}')
    return ', '.join(parts)


def check_member_lists(boxes_list: Sequence,
                       scores_list: Sequence,
                       labels_list: Sequence,
                       image: Optional[int] = None) -> int:
    """Check the per-member lists of one image have consistent lengths.

    Args:
        boxes_list (Sequence[array[n_i, 4]]): boxes of each member.
        scores_list (Sequence[array[n_i]]): scores of each member.
        labels_list (Sequence[array[n_i]]): labels of each member.
        image (int, optional): image index, named in the error of batch calls.

    Returns:
        int: number of members.

    Raises:
        ValueError: on any length mismatch, naming member/image/field.
    """
    img = '' if image is None else f'image {image}: '
    n = len(boxes_list)
    for name, lst in (('scores', scores_list), ('labels', labels_list)):
        if len(lst) != n:
            raise ValueError(f"{img}field '{name}' has {len(lst)} members but "
                             f"field 'boxes' has {n}")
    for t in range(n):
        nb = len(boxes_list[t])
        for name, lst in (('scores', scores_list), ('labels', labels_list)):
            if len(lst[t]) != nb:
                raise ValueError(
                    f"{_where(t, None, image)}: field '{name}' has "
                    f"{len(lst[t])} entries but field 'boxes' has {nb}")
    return n


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
        ValueError: wrong length, non-finite or non-positive weight.
            (ensemble-boxes prints a warning and uses ones for a wrong
            length; zero/negative weights make it divide by zero.)
    """
    if weights is None:
        return torch.ones(num_members, dtype=torch.float64, device=device)
    w = torch.as_tensor(weights, dtype=torch.float64).to(device).reshape(-1)
    if w.numel() != num_members:
        raise ValueError(f"field 'weights' has {w.numel()} entries, expected "
                         f'one per member ({num_members})')
    bad = ~torch.isfinite(w) | (w <= 0)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        raise ValueError(f"member {t}: field 'weights' must be finite and > 0,"
                         f' got {float(w[t])}')
    return w


def check_packed(dets: PackedDetections, report_image: bool = True) -> None:
    """Validate packed (flat) detections in one vectorised pass.

    Args:
        dets (PackedDetections): the detections as tensors on one device
            (``images`` not ``None``); scores must lie in ``[0, 1]``,
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
    lab = labels if labels.is_floating_point() else None
    # fast path: one host sync; aminmax propagates NaN, so NaN fails too
    stats = [
        boxes.aminmax(), scores.aminmax(),
        members.aminmax(), images.aminmax()
    ]
    vals = torch.stack([v.double() for mm in stats for v in mm]
                       + [(boxes[:, 2:] >= boxes[:, :2]).all().double()])
    if lab is not None:
        vals = torch.cat([
            vals, torch.stack([v.double() for v in lab.aminmax()]),
            (lab == lab.trunc()).all().double()[None]
        ])
    v = vals.tolist()
    inf = float('inf')
    if (-inf < v[0] and v[1] < inf and 0 <= v[2] and v[3] <= 1
            and 0 <= v[4] and v[5] < num_members and 0 <= v[6]
            and v[7] < num_images and v[8] == 1
            and (lab is None or (-inf < v[9] and v[10] < inf and v[11]))):
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
    ]
    if lab is not None:
        checks.append(('labels', ~torch.isfinite(lab) | (lab != lab.trunc()),
                       'is not an integer'))
    bad = torch.stack([c[1] for c in checks])  # [num_checks, M]
    any_bad = bad.any(1).tolist()
    if not any(any_bad):
        return
    first = torch.where(bad, torch.arange(m, device=bad.device), m).amin(1)
    c = min((k for k in range(len(checks)) if any_bad[k]),
            key=lambda k: (int(first[k]), k))
    k = int(first[c])
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
                 members: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Clip normalised boxes to ``[0, 1]`` and flag zero-area boxes.

    Mirrors ensemble-boxes' ``prefilter_boxes`` / ``prepare_boxes`` repair
    (clip each coordinate, then drop boxes with ``(x2-x1)*(y2-y1) == 0``),
    but warns once per call with counts instead of once per box.

    Args:
        boxes (Tensor[M, 4]): normalised boxes (already validated).
        members (Tensor[M], optional): member of each box, to break the
            counts down per member in the warning.

    Returns:
        tuple[Tensor[M, 4], Tensor[M]]: clipped boxes and a bool mask of
        boxes with non-zero area (the ones to keep).
    """
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

    def per_member(mask: Tensor) -> str:
        if members is None:
            return ''
        cnt = torch.bincount(members[mask])
        d = {i: c for i, c in enumerate(cnt.tolist()) if c}
        return f' (per member: {d})'

    if n_out:
        warnings.warn(
            f'mmens: clipped {n_out} box(es) with coordinates outside [0, 1]'
            f'{per_member(outside)}; check that boxes are normalised',
            stacklevel=3)
        boxes = clipped
    if n_zero:
        warnings.warn(
            f'mmens: skipped {n_zero} zero-area box(es)'
            f'{per_member(~keep)}',
            stacklevel=3)
    return boxes, keep
