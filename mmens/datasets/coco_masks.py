"""The instance masks of COCO-results files: ``segmentation`` read, validated, as runs.

A member's entry may carry ``segmentation``, as mmdet's ``CocoMetric(format_only=True)``
and detectron2 write it: a compressed RLE ``{"size": [h, w], "counts": "..."}``, an
uncompressed RLE (``counts`` a list of numbers) or a list of polygons
``[[x1, y1, x2, y2, ...], ...]``. Masks are in the image: an RLE's ``size`` is the image's
``[height, width]`` and its counts cover exactly its ``height * width`` pixels.

Every failure is one ``ValueError`` naming the member, the file, the entry and its image:
a missing or mistyped ``segmentation``, an RLE whose size is not the image's, a malformed
RLE text (see :func:`mmens.ops.masks.rle_decode_counts`), counts that do not cover the
image, a polygon of fewer than 3 points. pycocotools' decoder does no such checks and
writes past its buffer on a malformed RLE, which is why nothing reaches it unchecked.

The checks and the RLE text decoding are vectorised over the entries of a file; polygons
are rasterised by pycocotools, one call per entry.
"""
import mmap
import os
import os.path as osp
import re
from typing import List, Mapping, Sequence, Tuple, Union

import msgspec
import numpy as np
import torch

from mmens.ops.masks import MaskRuns, rle_decode_counts, runs_from_counts

__all__ = ['file_has_masks', 'read_member_masks', 'masks_to_rles']

_KEY = b'"segmentation"'


def file_has_masks(path: str, scan: bool = False) -> bool:
    """Whether the first entry of the COCO-results file ``path`` carries
    ``"segmentation"``: a file's masks are all or none (:func:`read_member_masks` refuses
    an entry without), so the first entry decides. Only the bytes up to the first ``}``
    are scanned: an entry holds no other object than an RLE ``segmentation`` (whose key
    comes first), and no string of a results file holds a ``}``; a box-only member costs
    microseconds, not a pass over the file. ``scan=True`` (validation) also looks past a
    first entry without masks, so that a file whose later entries carry them is read as a
    mask file, and refused entry by entry, instead of losing its masks unsaid."""
    if not osp.isfile(path) or os.path.getsize(path) == 0:
        return False
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        end = m.find(b'}')
        if m.find(_KEY, 0, end if end >= 0 else len(m)) >= 0:
            return True
        return scan and m.find(_KEY) >= 0


class _RLE(msgspec.Struct, gc=False):
    size: Tuple[int, int]
    counts: Union[str, List[int]]


class _Entry(msgspec.Struct, gc=False):
    image_id: int
    segmentation: Union[_RLE, List[List[float]]]


_DECODER = msgspec.json.Decoder(List[_Entry])


def _decode(path: str, name: str, image_ids: np.ndarray) -> List[_Entry]:
    """The entries' ``segmentation``, typed; a mistyped one raises naming its entry."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as e:  # the box fields decoded already: a mask's fault
        found = re.search(r'at `\$\[(\d+)\]', str(e))
        if not found:
            raise ValueError(f"member '{name}' ({path}): {e}") from None
        i = int(found.group(1))
        img = int(image_ids[i]) if i < len(image_ids) else '?'
        what = ("missing field 'segmentation'" if 'segmentation' in str(e) and
                'missing' in str(e).lower() else
                "field 'segmentation' must be an RLE {size: [h, w], counts} or a list of "
                f'polygons ({e})')
        raise ValueError(f"member '{name}' ({path}): entry {i} (image_id {img}): "
                         f'{what}') from None


def _polygon_text(polys: List[List[float]], h: int, w: int) -> Union[bytes, int]:
    """The compressed RLE text of polygons, or the index of the first bad polygon."""
    from pycocotools import mask as mask_utils  # C; only where polygons occur
    for k, p in enumerate(polys):
        if len(p) < 6 or len(p) % 2 or not np.isfinite(p).all():
            return k
    if not polys:
        return 0
    return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))['counts']


def read_member_masks(path: str, name: str, image_sizes: Mapping[int, Tuple[int, int]],
                      image_ids: np.ndarray) -> MaskRuns:
    """The masks of a member file, validated, one per entry (in entry order).

    Args:
        path (str): the member's COCO-results file (its boxes validated without repair,
            so that its entries are ``image_ids``' entries).
        name (str): member name, for the messages.
        image_sizes (Mapping[int, tuple[int, int]]): ``image_id -> (width, height)``.
        image_ids (np.ndarray): ``[M]`` the image of each entry.

    Returns:
        MaskRuns: ``M`` masks (CPU), each in its image's column-major pixel index.
    """
    entries = _decode(path, name, image_ids)
    uniq, inv = np.unique(image_ids, return_inverse=True)
    wh = np.array([image_sizes[i] for i in uniq.tolist()], np.int64).reshape(-1, 2)
    hw = np.ascontiguousarray(wh[inv.reshape(-1), ::-1])  # [M, 2] (height, width)

    def fail(i: int, what: str) -> None:
        raise ValueError(f"member '{name}' ({path}): entry {i} (image_id "
                         f"{int(image_ids[i])}): field 'segmentation' {what}")

    texts: List[bytes] = [b''] * len(entries)
    lists = {}
    for i, e in enumerate(entries):  # the types only: one attribute test per entry
        seg = e.segmentation
        if isinstance(seg, _RLE):
            if tuple(seg.size) != tuple(hw[i]):
                fail(i, f'has size {list(seg.size)}, not its image\'s [height, width] '
                     f'{hw[i].tolist()}')
            if isinstance(seg.counts, str):
                texts[i] = seg.counts.encode()
            else:
                lists[i] = seg.counts
        else:
            text = _polygon_text(seg, int(hw[i, 0]), int(hw[i, 1]))
            if isinstance(text, int):
                fail(i, f'polygon {text} needs at least 3 points (6 finite numbers, x y '
                     'pairs)')
            texts[i] = text
    counts, offsets, bad = rle_decode_counts(texts)
    if lists:  # uncompressed RLEs: their counts as given
        counts, offsets, bad = _with_lists(counts, offsets, bad, lists)
    total = np.add.reduceat(counts, offsets[:-1]) if len(counts) else np.zeros(0)
    total = np.where(np.diff(offsets) > 0, total, 0)
    bad |= total != hw[:, 0] * hw[:, 1]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fail(i, f'is a malformed RLE (its counts cover {int(total[i])} pixels, not the '
             f'{int(hw[i, 0] * hw[i, 1])} of its {hw[i, 0]}x{hw[i, 1]} image)')
    return runs_from_counts(torch.from_numpy(counts), torch.from_numpy(offsets))


def _with_lists(counts: np.ndarray, offsets: np.ndarray, bad: np.ndarray, lists: dict
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put the uncompressed counts ``lists`` (entry -> list) in place of their empty texts."""
    n = np.diff(offsets)
    parts = np.split(counts, offsets[1:-1])
    for i, c in lists.items():
        parts[i] = np.asarray(c, np.int64)
        n[i] = len(c)
        bad[i] = bool((parts[i] < 0).any())
    offsets = np.concatenate(([0], np.cumsum(n)))
    return np.concatenate(parts) if parts else counts, offsets, bad


def masks_to_rles(texts: Sequence[bytes], heights: Sequence[int], widths: Sequence[int]
                  ) -> List[dict]:
    """COCO ``segmentation`` dicts ``{size: [h, w], counts: str}`` of RLE texts."""
    return [dict(size=[int(h), int(w)], counts=t.decode('ascii'))
            for t, h, w in zip(texts, heights, widths)]
