"""ensemble-boxes style list API on top of the packed tensor ops.

Converts ``[(boxes_list, scores_list, labels_list), ...]`` (one tuple per
image, one array per member) to flat tensors in one go and splits packed
results back per image. NumPy / list input gives NumPy output (computed on
CPU); if any member array is a :class:`torch.Tensor`, everything runs on
that tensor's device and torch tensors come back.

NumPy arrays and plain Python lists are packed, checked and repaired by the
compiled packer (``mmens/ops/csrc/pack_lists.cpp``) when the kernel is built
and the backend is not ``'torch'``; anything it does not read (tensors, other
dtypes, a mistake) goes through the Python packer, which names the mistake.
"""
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import kernel
from .packed import CheckedDetections, PackedDetections, Repair
from .validation import check_member_lists, member_arrays, member_sizes

__all__ = ['PackedLists', 'pack_images', 'run_packed', 'unpack_images']


class PackedLists(NamedTuple):
    """Flat version of a batch of per-member lists.

    Attributes:
        dets (PackedDetections): the detections, packed member-major per
            image, i.e. ensemble-boxes' concatenation order (``images`` set).
        is_torch (bool): the input held torch tensors.
        device (torch.device): where results go.
        dtype: output float dtype (torch dtype when ``is_torch``).
        np_dtypes (list[tuple]): per image, the NumPy result types of
            boxes, scores, labels (the dtypes ``np.concatenate`` of that
            image's member arrays gives), for NumPy output.
    """
    dets: PackedDetections
    is_torch: bool
    device: torch.device
    dtype: Any
    np_dtypes: List[Tuple[Any, Any, Any]]


#: NumPy dtypes of pack_lists.cpp's dtype codes.
_KINDS = tuple(np.dtype(k) for k in ('float64', 'float32', 'int64', 'int32'))


def _pack_compiled(images: Sequence) -> Optional[PackedLists]:
    """:func:`pack_images` by the compiled packer; ``None`` when it does not
    read this input (or is not built, or the backend is ``'torch'``)."""
    if kernel._ext is None or kernel.get_backend() == 'torch':
        return None
    r = kernel._ext.pack_lists(images)
    if r is None:
        return None
    boxes, scores, labels, members, imgs, keep, counts, kinds, n = r
    dets = CheckedDetections(boxes, scores, labels, members, imgs, n,
                             len(images),
                             repair=Repair(keep, counts[0], counts[1]))
    k = kinds.numpy()  # [I, 3] dtype codes of the boxes, scores, labels
    if len(k) and (k == k[0]).all():
        np_dtypes = [tuple(_KINDS[c] for c in k[0].tolist())] * len(k)
    else:
        np_dtypes = [tuple(_KINDS[c] for c in row) for row in k.tolist()]
    return PackedLists(dets, False, torch.device('cpu'), torch.float64,
                       np_dtypes)


def _result_type(arrays: List[np.ndarray]) -> np.dtype:
    """dtype of ``np.concatenate(arrays)`` (float64 for no arrays)."""
    return np.result_type(*[a.dtype for a in arrays]) if arrays else \
        np.dtype(np.float64)


def _cat_np(arrays: List[np.ndarray], shape: Tuple[int, ...]) -> Tensor:
    """Concatenate NumPy arrays into one float64 CPU tensor of ``shape``."""
    if not arrays:
        return torch.zeros(shape[1:] and (0, ) + shape[1:] or (0, ),
                           dtype=torch.float64)
    nd = len(shape)  # reshape only what needs it (empty or 0-d members)
    cat = np.concatenate(
        [a if a.ndim == nd and a.shape[0] else a.reshape(shape) for a in arrays])
    return torch.from_numpy(cat.astype(np.float64, copy=False))


def _split_members(images: Sequence[Tuple[Sequence, Sequence, Sequence]],
                   report_image: bool) -> Tuple[int, list, list, list]:
    """Flatten the per-image member lists (member-major per image), checking
    that every image is a ``(boxes_list, scores_list, labels_list)`` of
    lists with the same number of members.

    Returns:
        tuple: ``N``, and the boxes, scores and labels (as given) of every
        ``(image, member)``, image-major.
    """
    if not isinstance(images, Sequence):
        raise TypeError('images must be a list of (boxes_list, scores_list, '
                        f'labels_list) tuples, got {type(images).__name__}')
    num_members = None
    bl: List[Any] = []
    sl: List[Any] = []
    ll: List[Any] = []
    for i, img in enumerate(images):
        if not isinstance(img, (tuple, list)) or len(img) != 3:
            raise TypeError(f'image {i}: expected a (boxes_list, scores_list,'
                            f' labels_list) tuple, got {type(img).__name__}')
        b_list, s_list, l_list = img
        n = len(b_list) if type(b_list) is type(s_list) is type(
            l_list) is list and len(b_list) == len(s_list) == len(
                l_list) else check_member_lists(b_list, s_list, l_list,
                                                i if report_image else None)
        if num_members is None:
            num_members = n
        elif n != num_members:
            raise ValueError(f"image {i}: field 'boxes' has {n} members, "
                             f'image 0 has {num_members}')
        bl.extend(b_list)
        sl.extend(s_list)
        ll.extend(l_list)
    return num_members or 0, bl, sl, ll


def pack_images(images: Sequence[Tuple[Sequence, Sequence, Sequence]],
                report_image: bool = True) -> PackedLists:
    """Pack per-image per-member lists into flat tensors.

    Args:
        images (Sequence[tuple]): ``(boxes_list, scores_list, labels_list)``
            per image; ``boxes_list[n]`` is ``[n_i, 4]``, the others
            ``[n_i]``, for member ``n``.
        report_image (bool): name the image in error messages.

    Returns:
        PackedLists: see the class.

    Raises:
        TypeError: a field that is not a list of numeric arrays (``None``,
            strings, ...), naming image, member and field.
        ValueError: ragged lists, inconsistent lengths / shapes, naming
            image, member and field.
    """
    fast = _pack_compiled(images)
    if fast is not None:
        return fast
    num_members, bl, sl, ll = _split_members(images, report_image)
    num_images = len(images)
    bl, sl, ll = (member_arrays(x, f, num_members, report_image)
                  for x, f in ((bl, 'boxes'), (sl, 'scores'), (ll, 'labels')))
    ref = next((x for x in bl + sl if isinstance(x, Tensor)), None)
    sizes = member_sizes(bl, sl, ll, num_members, report_image)
    if ref is not None:
        dev = ref.device
        dtype = ref.dtype if ref.is_floating_point() else torch.float32

        def cat(xs, shape, dt):
            ts = [torch.as_tensor(x).to(dev, dt).reshape(shape) for x in xs]
            return torch.cat(ts) if ts else torch.zeros(
                shape, dtype=dt, device=dev)

        boxes = cat(bl, (-1, 4), torch.float64)
        scores = cat(sl, (-1, ), torch.float64)
        labels = cat(ll, (-1, ), torch.float64)
        np_dtypes = [(None, None, None)] * num_images
    else:
        dev, dtype = torch.device('cpu'), torch.float64
        np_dtypes = _np_result_types((bl, sl, ll), num_members, num_images)
        boxes = _cat_np(bl, (-1, 4))
        scores = _cat_np(sl, (-1, ))
        labels = _cat_np(ll, (-1, ))
    cnt = torch.tensor(sizes, dtype=torch.long, device=dev)
    ids = torch.arange(len(sizes), dtype=torch.long, device=dev)
    flat = torch.repeat_interleave(ids, cnt)  # [M] (image, member) id
    n = max(num_members, 1)
    dets = PackedDetections(boxes, scores, labels, flat % n, flat // n,
                            num_members, num_images)
    return PackedLists(dets, ref is not None, dev, dtype, np_dtypes)


def _np_result_types(fields: Tuple[list, list, list], num_members: int,
                     num_images: int) -> List[Tuple[Any, Any, Any]]:
    """Per image, the dtypes ``np.concatenate`` gives each field (one
    ``np.result_type`` for the batch when every array shares its dtype)."""
    kinds = [{a.dtype for a in arrs} for arrs in fields]
    if all(len(k) == 1 for k in kinds):
        return [tuple(next(iter(k)) for k in kinds)] * num_images
    n = num_members
    return [
        tuple(_result_type(a[i * n:(i + 1) * n]) for a in fields)
        for i in range(num_images)
    ]


def unpack_images(packed: PackedLists,
                  boxes: Tensor,
                  scores: Tensor,
                  labels: Tensor,
                  images: Tensor,
                  np_dtypes: Optional[Tuple[Any, Any, Any]] = None,
                  np_empty_dtype: Any = np.float64) -> List[Tuple]:
    """Split packed results (sorted by image) into per-image tuples.

    Args:
        packed (PackedLists): the packed input (backend, device, dtypes).
        boxes (Tensor[K, 4]), scores (Tensor[K]), labels (Tensor[K]),
        images (Tensor[K]): results grouped by image.
        np_dtypes (tuple, optional): NumPy dtypes of boxes, scores, labels
            for every image; ``None`` entries default to the image's
            ``packed.np_dtypes``.
        np_empty_dtype: NumPy dtype of all three for images without output
            (``None``: use ``np_dtypes``).

    Returns:
        list[tuple]: ``(boxes [k, 4], scores [k], labels [k])`` per image.
    """
    counts = torch.bincount(images,
                            minlength=packed.dets.num_images).tolist()
    if packed.is_torch:
        b = boxes.to(packed.dtype).split(counts)
        s = scores.to(packed.dtype).split(counts)
        lab = labels.long().split(counts)
        return list(zip(b, s, lab))
    force = np_dtypes or (None, None, None)
    ends = np.cumsum(counts).tolist()
    starts = [0] + ends[:-1]
    uniform = packed.np_dtypes[:1] * len(counts) == packed.np_dtypes
    if uniform and packed.np_dtypes:  # one cast per field, then views
        dts = [f or d for f, d in zip(force, packed.np_dtypes[0])]
        cols = [x.cpu().numpy().astype(d, copy=False)
                for x, d in zip((boxes, scores, labels), dts)]
    else:
        cols = [x.cpu().numpy().astype(f or np.float64, copy=False)
                for x, f in zip((boxes, scores, labels), force)]
    b_np, s_np, l_np = cols
    empty = None if np_empty_dtype is None else (
        np.zeros((0, 4), np_empty_dtype), np.zeros((0, ), np_empty_dtype),
        np.zeros((0, ), np_empty_dtype))
    out = []
    for i, (a, e) in enumerate(zip(starts, ends)):
        if a == e and empty is not None:
            out.append(tuple(x.copy() for x in empty))
        elif uniform:
            out.append((b_np[a:e], s_np[a:e], l_np[a:e]))
        else:
            dts = [f or d for f, d in zip(force, packed.np_dtypes[i])]
            out.append(tuple(x[a:e].astype(d, copy=False)
                             for x, d in zip(cols, dts)))
    return out


def run_packed(packed_fn, images: Sequence[Tuple[Sequence, Sequence, Sequence]],
               report_image: bool = True, **kwargs) -> Tuple[PackedLists, Tuple]:
    """Pack per-image member lists, call a ``*_packed`` method on them all at once.

    Returns the packing (for :func:`unpack_images`) and the method's outputs.
    """
    p = pack_images(images, report_image)
    out = packed_fn(p.dets, _report_image=report_image, **kwargs)
    return p, out
