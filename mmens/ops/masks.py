"""Instance masks fused over box clusters, as run-lengths (torch; the RLE text codec numpy).

A binary mask of an ``H x W`` image is held as its runs of ones in COCO's order: the
column-major flat pixel index ``p = x * H + y`` (``pycocotools.mask``'s RLE). Many masks
are one :class:`MaskRuns` (a ragged array of runs), so every step below is a handful of
tensor operations over all runs of all masks, never a full-image mask per box: a mask
costs its number of runs, a fused mask the pixels of its cluster's region.

:func:`fuse_cluster_masks` is the fused mask of a cluster of matched boxes
(:func:`~mmens.ops.clustering.match_boxes`' ``box_cluster``): the weighted mean of its
members' masks over the cluster's region, thresholded. :func:`rle_decode_counts` and
:func:`rle_encode_counts` are pycocotools' compressed RLE text (``counts`` strings),
vectorised over many masks; the decoder is also the validator of that text.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ['MaskRuns', 'runs_from_counts', 'runs_to_counts', 'runs_from_bitmaps',
           'rle_decode_counts', 'rle_encode_counts', 'mask_extents', 'cluster_regions',
           'fuse_cluster_masks']

#: Buffer elements (float64) that :func:`fuse_cluster_masks` fills per step: 4M = 32 MB.
MAX_BUFFER = 1 << 22


def _ragged(offsets: Tensor, index: Tensor) -> Tuple[Tensor, Tensor]:
    """Positions of the items of the ragged rows ``index`` (rows given by ``offsets
    [R + 1]``), concatenated, and the position in ``index`` that owns each."""
    lo, n = offsets[index], offsets[index + 1] - offsets[index]  # [J]
    owner = torch.repeat_interleave(n)
    first = torch.cumsum(n, 0) - n  # [J]
    pos = torch.arange(len(owner), device=offsets.device) - first[owner] + lo[owner]
    return pos, owner


def _offsets(counts: Tensor) -> Tensor:
    """``[J + 1]`` offsets of rows of ``counts [J]`` items."""
    return torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))


class MaskRuns(NamedTuple):
    """Binary masks as runs of ones (COCO's column-major flat pixel index).

    Attributes:
        starts (Tensor[R]): long, first pixel of each run.
        ends (Tensor[R]): long, one past its last pixel (``ends > starts``).
        offsets (Tensor[J + 1]): long, mask ``j``'s runs are ``offsets[j]:offsets[j+1]``,
            sorted and apart (two runs never touch).
    """
    starts: Tensor
    ends: Tensor
    offsets: Tensor

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def empty(device: Union[str, torch.device] = 'cpu') -> 'MaskRuns':
        """No masks."""
        none = torch.zeros(0, dtype=torch.long, device=device)
        return MaskRuns(none, none, torch.zeros(1, dtype=torch.long, device=device))

    def select(self, index: Tensor) -> 'MaskRuns':
        """The masks ``index [J]`` (repeats allowed), in that order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.offsets.device)
        pos, owner = _ragged(self.offsets, index)
        n = torch.bincount(owner, minlength=len(index))
        return MaskRuns(self.starts[pos], self.ends[pos], _offsets(n))

    @staticmethod
    def cat(parts: Sequence['MaskRuns']) -> 'MaskRuns':
        """The masks of ``parts``, one after the other."""
        shift = np.cumsum([0] + [len(p.starts) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + int(s)
                                             for p, s in zip(parts, shift)]
        return MaskRuns(torch.cat([p.starts for p in parts]),
                        torch.cat([p.ends for p in parts]), torch.cat(offsets))


def _joined_runs(starts: Tensor, ends: Tensor, mask_of: Tensor, num: int) -> MaskRuns:
    """``num`` masks of the sorted runs ``starts, ends [R]`` of masks ``mask_of [R]``,
    a run that starts where the one before it in the same mask ends merged into it."""
    joined = torch.zeros_like(mask_of, dtype=torch.bool)
    joined[1:] = (starts[1:] == ends[:-1]) & (mask_of[1:] == mask_of[:-1])
    last = torch.ones_like(joined)
    last[:-1] = ~joined[1:]
    return MaskRuns(starts[~joined], ends[last],
                    _offsets(torch.bincount(mask_of[~joined], minlength=num)))


def runs_from_counts(counts: Tensor, offsets: Tensor) -> MaskRuns:
    """Masks from their RLE counts (alternating runs of zeros and ones, zeros first).

    Args:
        counts (Tensor[V]): long, the counts of all masks, concatenated (non-negative).
        offsets (Tensor[J + 1]): long, mask ``j``'s counts are ``offsets[j]:offsets[j+1]``.
    """
    n = offsets.diff()  # [J]
    mask_of = torch.repeat_interleave(n)  # [V]
    total = torch.cumsum(counts, 0)  # [V]
    base = (total - counts)[offsets[:-1].clamp(max=max(len(counts) - 1, 0))]  # [J]
    ends = total - base[mask_of]  # [V] end of each run inside its mask
    pos = torch.arange(len(counts), device=counts.device) - offsets[:-1][mask_of]
    one = (pos % 2 == 1) & (counts > 0)  # [V] runs of ones that hold pixels
    # a zero-length run of zeros between two runs of ones merges them
    return _joined_runs((ends - counts)[one], ends[one], mask_of[one], len(n))


def runs_from_bitmaps(masks: Tensor) -> MaskRuns:
    """Masks from bitmaps ``Tensor[K, H, W]`` (bool, e.g. an mmdet detector's
    ``pred_instances.masks``): one pass over their pixels, on their device."""
    k, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(k, h * w).bool()  # [K, H*W] column-major
    edge = torch.zeros(k, h * w + 1, dtype=torch.int8, device=masks.device)
    edge[:, 1:] += flat.to(torch.int8)
    edge[:, :-1] -= flat.to(torch.int8)  # edge[j] = m[j-1] - m[j]: -1 a start, 1 an end
    mask_s, starts = torch.nonzero(edge == -1, as_tuple=True)
    _, ends = torch.nonzero(edge == 1, as_tuple=True)  # row-major: by mask, then pixel
    return MaskRuns(starts, ends, _offsets(torch.bincount(mask_s, minlength=k)))


def runs_to_counts(runs: MaskRuns, areas: Tensor) -> Tuple[Tensor, Tensor]:
    """RLE counts of masks (zeros first): ``counts [V]`` and ``offsets [J + 1]``.

    Args:
        runs (MaskRuns): ``J`` masks.
        areas (Tensor[J]): long, ``H * W`` of each mask's image.
    """
    r = runs.offsets.diff()  # [J] runs per mask
    off = _offsets(2 * r + 1)  # [J + 1] each mask has 2 r + 1 counts
    mask_of = torch.repeat_interleave(r)  # [R]
    local = torch.arange(len(runs.starts), device=r.device) - runs.offsets[:-1][mask_of]
    prev_end = torch.zeros_like(runs.ends)
    prev_end[1:] = runs.ends[:-1]
    prev_end[local == 0] = 0  # [R] end of the previous run of the same mask
    counts = torch.empty(int(off[-1]), dtype=torch.long, device=r.device)
    at = off[:-1][mask_of] + 2 * local  # [R]
    counts[at] = runs.starts - prev_end
    counts[at + 1] = runs.ends - runs.starts
    last_end = torch.zeros_like(areas)
    has = r > 0
    last_end[has] = runs.ends[runs.offsets[1:][has] - 1]
    counts[off[1:] - 1] = areas - last_end
    # pycocotools ends a mask that ends with ones with its run of ones: no zero count after
    drop = off[1:][has & (last_end == areas)] - 1
    if len(drop):
        keep = torch.ones(len(counts), dtype=torch.bool, device=r.device)
        keep[drop] = False
        counts = counts[keep]
        off = _offsets(2 * r + 1 - (has & (last_end == areas)).long())
    return counts, off


def rle_decode_counts(texts: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' compressed RLE text (``counts`` strings) → counts, vectorised.

    Mirrors ``rleFrString`` of pycocotools' ``maskApi.c``: 5 bits per character (offset
    48), bit 0x20 continues a number, bit 0x10 of its last character is the sign, and from
    the fourth count on a count is stored as its difference to the one two before.

    Returns:
        tuple: ``counts [V]`` int64, ``offsets [S + 1]`` int64 and ``bad [S]`` bool: a text
        with a character outside ``'0'..'o'``, a number not ended by its last character,
        a number beyond 60 bits, or a negative count (the caller checks the counts' sum).
    """
    lens = np.fromiter(map(len, texts), np.int64, len(texts))
    c = np.frombuffer(b''.join(texts), np.uint8).astype(np.int64) - 48  # [T]
    text_of = np.repeat(np.arange(len(texts)), lens)  # [T]
    bad = np.zeros(len(texts), bool)
    bad[text_of[(c < 0) | (c > 63)]] = True
    c &= 63
    end = (c & 0x20) == 0  # [T] the last character of a number
    last = np.cumsum(lens) - 1
    last = last[lens > 0]
    bad[text_of[last[~end[last]]]] = True  # a text must end with a whole number
    end[last] = True
    first = np.flatnonzero(np.concatenate(([True], end[:-1])))  # [V] 1st char of each
    num_of = np.cumsum(end) - end  # [T] number of each character
    k = np.arange(len(c)) - first[num_of]  # [T] its 5-bit digit
    too_long = k > 11
    bad[text_of[too_long]] = True
    x = np.add.reduceat((c & 0x1F) << (5 * np.minimum(k, 11)), first) if len(c) else c
    ends = np.flatnonzero(end)  # [V] last char of each number
    x -= np.where((c[ends] & 0x10) != 0, 1 << (5 * (k[ends] + 1)), 0)  # sign-extend
    num_text = text_of[ends]  # [V]
    offsets = np.zeros(len(texts) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(num_text, minlength=len(texts)))
    pos = np.arange(len(x)) - offsets[num_text]  # [V] count index in its text
    # counts 1, 3, 5, ... and 2, 4, 6, ... are running sums of their differences
    group = np.where(pos == 0, 3 * num_text, 3 * num_text + 1 + pos % 2)  # [V]
    order = np.argsort(group, kind='stable')
    g = group[order]
    run = np.cumsum(x[order])
    start = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    run -= np.repeat(run[start] - x[order][start], np.diff(np.append(start, len(g))))
    counts = np.empty_like(x)
    counts[order] = run
    bad[num_text[counts < 0]] = True
    return counts, offsets, bad


def rle_encode_counts(counts: np.ndarray, offsets: np.ndarray) -> List[bytes]:
    """Counts → pycocotools' compressed RLE text (``rleToString``), vectorised; the
    inverse of :func:`rle_decode_counts`."""
    counts = np.asarray(counts, np.int64)
    n = np.diff(offsets)
    text_of = np.repeat(np.arange(len(n)), n)
    pos = np.arange(len(counts)) - offsets[:-1][text_of]
    x = counts.copy()
    back = pos > 2
    x[back] -= counts[np.flatnonzero(back) - 2]  # the difference to the count two before
    digits = np.zeros((len(x), 13), np.uint8)  # 13 digits of 5 bits hold any int64
    used = np.zeros((len(x), 13), bool)
    more = np.ones(len(x), bool)
    for d in range(13):  # one pass per digit, all numbers at once
        ch = x & 0x1F
        x = x >> 5
        more_next = np.where((ch & 0x10) != 0, x != -1, x != 0) & more
        digits[:, d] = (ch | np.where(more_next, 0x20, 0)) + 48
        used[:, d] = more
        more = more_next
    chars = digits[used]  # row-major: each number's digits in order
    per_text = np.bincount(text_of, weights=used.sum(1), minlength=len(n)).astype(np.int64)
    blob = chars.tobytes()
    bounds = np.concatenate(([0], np.cumsum(per_text)))
    return [blob[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def mask_extents(runs: MaskRuns, heights: Tensor) -> Tensor:
    """``[J, 4]`` float64 ``(x0, y0, x1, y1)`` half-open pixel box of each mask
    (``heights [J]``: its image's height); ``(inf, inf, -inf, -inf)`` for an empty mask."""
    dev = runs.offsets.device
    num = len(runs)
    mask_of = torch.repeat_interleave(runs.offsets.diff())
    h = heights.to(dev)[mask_of]  # [R]
    cs, ce = runs.starts // h, (runs.ends - 1) // h  # [R] first and last column
    multi = ce > cs  # a run over several columns covers whole columns' rows
    ys = torch.where(multi, 0, runs.starts - cs * h)
    ye = torch.where(multi, h, runs.ends - ce * h)
    idx = mask_of[:, None].expand(-1, 2)
    lo = torch.full((num, 2), float('inf'), dtype=torch.float64, device=dev).scatter_reduce(
        0, idx, torch.stack((cs, ys), 1).double(), 'amin')
    hi = torch.full((num, 2), float('-inf'), dtype=torch.float64, device=dev).scatter_reduce(
        0, idx, torch.stack((ce + 1, ye), 1).double(), 'amax')
    return torch.cat((lo, hi), 1)


def cluster_regions(boxes: Tensor, box_cluster: Tensor, num_clusters: int,
                    image_sizes: Tensor, runs: Optional[MaskRuns] = None) -> Tensor:
    """``[C, 4]`` long ``(x0, y0, x1, y1)`` pixel region of each cluster: the smallest
    box of whole pixels holding all its boxes and, with ``runs``, all its boxes' masks
    (half-open, inside the image, at least one pixel). With the masks inside it, the
    fused mask is the thresholded weighted mean everywhere (outside the region every
    member mask is 0); the fused box (a weighted mean of the cluster's boxes) lies inside
    it too.

    Args:
        boxes (Tensor[M, 4]): pixel ``x1, y1, x2, y2``.
        box_cluster (Tensor[M]): long, cluster of each box, ``-1``: none.
        num_clusters (int): ``C``.
        image_sizes (Tensor[C, 2]): ``(width, height)`` of each cluster's image.
        runs (MaskRuns, optional): ``M`` masks, one per box.
    """
    keep = box_cluster >= 0
    b, cl = boxes[keep].double(), box_cluster[keep]
    wh = image_sizes.to(b.device).long()
    if runs is not None:
        ext = mask_extents(runs.select(torch.nonzero(keep).flatten()), wh[cl, 1])  # [K, 4]
        b = torch.cat((torch.minimum(b[:, :2], ext[:, :2]),
                       torch.maximum(b[:, 2:], ext[:, 2:])), 1)
    lo = torch.full((num_clusters, 2), float('inf'), dtype=torch.float64, device=b.device)
    hi = torch.full((num_clusters, 2), float('-inf'), dtype=torch.float64, device=b.device)
    lo = lo.scatter_reduce(0, cl[:, None].expand(-1, 2), b[:, :2], 'amin')
    hi = hi.scatter_reduce(0, cl[:, None].expand(-1, 2), b[:, 2:], 'amax')
    lo = torch.minimum(torch.floor(lo).clamp(min=0).long(), wh - 1)  # [C, 2]
    hi = torch.maximum(torch.minimum(torch.ceil(hi).long(), wh), lo + 1)  # [C, 2]
    return torch.cat((lo, hi), 1)


def fuse_cluster_masks(runs: MaskRuns, box_cluster: Tensor, box_weights: Tensor,
                       regions: Tensor, heights: Tensor, mask_thr: float = 0.5,
                       vote: bool = False, max_buffer: int = MAX_BUFFER) -> MaskRuns:
    """The fused mask of each cluster: the weighted mean of its boxes' masks over the
    cluster's region, ``>= mask_thr``.

    Per pixel of the region, the mean is ``sum_j w_j m_j / sum_j w_j`` over the cluster's
    boxes ``j`` (``w_j``: ``box_weights``, e.g. WBF's score times member weight; with
    ``vote``, 1: the share of the boxes that cover the pixel). Outside the region the
    fused mask is empty (:func:`cluster_regions` with the masks: they are all inside, so
    nothing is cut). Each member mask adds its runs, split by column, to a difference
    buffer of the region (one ``+w`` at a run's first row, one ``-w`` past its last), and
    one running sum gives the means: the work is the member runs plus the region pixels.
    Clusters are taken in steps of at most ``max_buffer`` region pixels (a bounded Python
    loop; one step for ordinary images).

    Args:
        runs (MaskRuns): ``M`` masks, one per box.
        box_cluster (Tensor[M]): long, the cluster of each box, ``-1``: none.
        box_weights (Tensor[M]): the weight of each box's mask (``> 0`` in a cluster).
        regions (Tensor[C, 4]): long ``(x0, y0, x1, y1)`` half-open pixel regions
            (:func:`cluster_regions`).
        heights (Tensor[C]): long, the height ``H`` of each cluster's image.
        mask_thr (float): in ``(0, 1]``; a pixel belongs to the fused mask when its mean
            is ``>= mask_thr`` (mmdet's rule for mask probabilities).
        vote (bool): weight every box's mask by 1.
        max_buffer (int): region pixels per step.

    Returns:
        MaskRuns: ``C`` masks, in the clusters' images.
    """
    if not 0 < mask_thr <= 1:
        raise ValueError(f'mask_thr must be in (0, 1], got {mask_thr}')
    dev = runs.offsets.device
    num = regions.shape[0]
    size = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1] + 1)  # [C]
    order = torch.argsort(box_cluster, stable=True)
    order = order[box_cluster[order] >= 0]  # boxes in a cluster, by cluster
    w = (torch.ones_like(box_weights) if vote else box_weights).double()
    first_box = torch.searchsorted(box_cluster[order], torch.arange(num + 1, device=dev))
    parts, step_size = [], torch.cumsum(size, 0).tolist()
    start = 0
    while start < num:  # steps of clusters whose buffers fit in max_buffer
        base = step_size[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(step_size, base + max_buffer, 'right')))
        stop = min(stop, num)
        boxes = order[first_box[start]:first_box[stop]]
        parts.append(_fuse_step(runs, boxes, box_cluster[boxes] - start, w[boxes],
                                regions[start:stop], heights[start:stop], mask_thr))
        start = stop
    return MaskRuns.cat(parts) if parts else MaskRuns.empty(dev)


def _fuse_step(runs: MaskRuns, boxes: Tensor, cluster: Tensor, w: Tensor, regions: Tensor,
               heights: Tensor, mask_thr: float) -> MaskRuns:
    """:func:`fuse_cluster_masks` of the clusters ``0..C-1`` of one step (``boxes [B]``
    their boxes, ``cluster [B]`` the cluster of each, ``w [B]`` its weight)."""
    dev = runs.offsets.device
    num = regions.shape[0]
    x0, y0, x1, y1 = regions.unbind(1)  # [C] each
    rows = y1 - y0 + 1  # [C] a column of the buffer: the region's rows and one past them
    buf_off = _offsets((x1 - x0) * rows)  # [C + 1]
    den = torch.zeros(num, dtype=torch.float64, device=dev).index_add_(0, cluster, w)
    if bool((den <= 0).any()):  # every score 0: each box counts once
        w = torch.where(den[cluster] > 0, w, torch.ones_like(w))
        den = torch.zeros(num, dtype=torch.float64, device=dev).index_add_(0, cluster, w)
    pos, owner = _ragged(runs.offsets, boxes)  # runs of these boxes' masks
    c = cluster[owner]  # [R] cluster of each run
    h = heights[c]
    s = torch.maximum(runs.starts[pos], x0[c] * h)  # [R] the run inside the region's columns
    e = torch.minimum(runs.ends[pos], x1[c] * h)
    inside = e > s
    s, e, c, h, wr = s[inside], e[inside], c[inside], h[inside], w[owner][inside]
    col_s, col_e = s // h, (e - 1) // h  # [R] first and last column of each run
    piece_of = torch.repeat_interleave(col_e - col_s + 1)
    col = col_s[piece_of] + torch.arange(len(piece_of), device=dev) - (
        torch.cumsum(col_e - col_s + 1, 0) - (col_e - col_s + 1))[piece_of]  # [P]
    c, h = c[piece_of], h[piece_of]
    ys = torch.maximum(s[piece_of] - col * h, y0[c]) - y0[c]  # [P] rows in the region
    ye = torch.minimum(e[piece_of] - col * h, y1[c]) - y0[c]
    keep = ye > ys
    c, col, ys, ye, wp = c[keep], col[keep], ys[keep], ye[keep], wr[piece_of][keep]
    at = buf_off[c] + (col - x0[c]) * rows[c]  # [P] the column's place in the buffer
    total = int(buf_off[-1])
    wp = wp / den[c]  # [P] the running sum is then the mean itself
    diff = torch.bincount(torch.cat((at + ys, at + ye)), weights=torch.cat((wp, -wp)),
                          minlength=total)  # [T]
    acc = torch.cumsum(diff, 0)  # each column's differences sum to 0: the sum restarts
    # 1e-9: a sum of the same weights in another order may miss its total by an ulp
    on = acc >= mask_thr * (1 - 1e-9)  # [T]; the row past each column's region is off
    up = torch.nonzero(on[1:] & ~on[:-1]).flatten() + 1  # [K] buffer index of run starts
    if total and bool(on[0]):
        up = torch.cat((up.new_zeros(1), up))
    down = torch.nonzero(on[:-1] & ~on[1:]).flatten() + 1  # [K] one past each run's end
    k = torch.searchsorted(buf_off, up, right=True) - 1  # [K] cluster of each run

    def to_image(i: Tensor) -> Tensor:  # buffer index in cluster k -> image pixel index
        local = i - buf_off[k]
        return (x0[k] + local // rows[k]) * heights[k] + y0[k] + local % rows[k]

    # a run ending at the image's last row goes on at the next column's first row
    return _joined_runs(to_image(up), to_image(down), k, num)
