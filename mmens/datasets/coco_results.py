"""Reading and validating COCO-results files (one detector member each).

A COCO-results file is a JSON list of ``{image_id, category_id, bbox: [x, y, w, h], score}``
in pixels, as written by mmdet's ``CocoMetric(format_only=True)``, detectron2, YOLO
exporters or ``tools/analysis_tools/dump_predictions.py``. Every check is vectorised over
entries and every failure names the member, the file, the entry index, the image id and the
field.

Policy (documented, tested in ``tests/test_datasets/test_coco_results.py``):

* always an error (``ValueError``): invalid JSON, not a list, a missing field, a member with no
  entries, NaN/inf in ``bbox`` or ``score``, negative width/height, unknown ``image_id`` or
  ``category_id``, a score outside [0, 1];
* zero-width/height boxes: an error;
* boxes reaching outside the image: clipped to the image, counted, reported in ``report``
  (ensemble-boxes clips too);
* with ``repair=True`` the error cases that can be repaired are repaired instead and counted:
  scores are clipped into [0, 1]; entries with non-finite values, non-positive size, or unknown
  image/category ids are removed. Nothing is removed without being counted in ``report``.

Reading is in columns, a block at a time: the compiled decoder ``mmens._results_io``
(``mmens/ops/csrc/results_io.cpp``) parses ``{image_id: int, category_id: int, bbox: 4
numbers, score: number}`` objects (other keys skipped) from 16 MB of the file at a time
straight into int64/float64 columns (:func:`iter_results_columns`: 0.1 s CPU for a 45 MB
member of 500k entries), and :class:`ColumnValidator` checks each block, the valid case in
one compiled pass. A file outside that layout (a wrong type, a missing field, ``NaN``
written by Python's ``json``, truncated JSON, ...), or a build without the compiled module,
is read whole by msgspec (typed), then untyped, so that its error names the first
malformed entry exactly as before; only the error path pays for that second read.
"""
import contextlib
import functools
import gc
import glob
import importlib.machinery
import importlib.util
import itertools
import json
import mmap
import operator
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import msgspec
import numpy as np
import orjson

REQUIRED_KEYS = ('image_id', 'category_id', 'bbox', 'score')


@dataclass
class MemberPredictions:
    """The validated predictions of one member, flat over images.

    Attributes:
        name (str): member name.
        image_ids (np.ndarray): ``[M]`` int64 COCO image ids.
        bboxes (np.ndarray): ``[M, 4]`` float32 ``x1, y1, x2, y2`` in pixels, inside the image.
        scores (np.ndarray): ``[M]`` float32 in [0, 1].
        category_ids (np.ndarray): ``[M]`` int64 COCO category ids.
        report (dict): counts of repairs, e.g. ``{'clipped_to_image': 3}``.
    """
    name: str
    image_ids: np.ndarray
    bboxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    report: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


class _Entry(msgspec.Struct, gc=False):
    """One COCO-results entry as msgspec decodes it (other keys are ignored, as before).

    ``gc=False``: the fields hold numbers and a tuple of numbers, never a cycle, and half a
    million tracked records per member would make the collector rescan them.
    """
    image_id: int
    category_id: int
    bbox: Tuple[float, float, float, float]
    score: float


_DECODER = msgspec.json.Decoder(List[_Entry])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a decoder builds millions of acyclic objects.

    Each allocation burst would otherwise trigger collections that rescan the young
    objects again and again (stdlib ``json.load`` of a member spends a third of its time
    there). Re-enabled on exit only if it was enabled."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_bytes(path: str, name: str) -> bytes:
    if not osp.isfile(path):
        raise ValueError(f"member '{name}': prediction file {path} does not exist")
    with open(path, 'rb') as f:
        return f.read()


@contextlib.contextmanager
def _mapped_bytes(path: str, name: str) -> Iterator[Union[bytes, mmap.mmap]]:
    """The file's bytes, memory-mapped: the decoder reads them in place, where reading
    copies the whole file (45 MB for a COCO-val member) into a new object first."""
    if not osp.isfile(path):
        raise ValueError(f"member '{name}': prediction file {path} does not exist")
    with open(path, 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:  # an empty file cannot be mapped
            yield b''
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _decode_untyped(raw: bytes, path: str, name: str) -> List[dict]:
    """Any JSON list; msgspec first, stdlib ``json`` for what it alone accepts (``NaN``,
    ``Infinity``, as Python's ``json.dump`` writes them) and for its error message."""
    try:
        with gc_paused():
            data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        try:
            with gc_paused():
                data = json.loads(raw.decode('utf-8'))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"member '{name}': {path} is not valid JSON "
                             f'(truncated or corrupt?): {e}') from None
    if not isinstance(data, list):
        raise ValueError(f"member '{name}': {path} must hold a JSON list of "
                         f'{{image_id, category_id, bbox, score}} entries, '
                         f'got {type(data).__name__}')
    return data


Columns = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class NotPlainLayout(Exception):
    """The file is not in the layout that the compiled decoder reads (or there is no
    compiled decoder): it is read whole, by the general decoders."""


_IO = []  # the compiled decoder module, once loaded ([None] where it is not built)


def _results_io():
    """``mmens._results_io``, loaded from its file: importing it as a submodule would
    first import ``mmens`` (torch), which a caller that only reads files may not need."""
    if not _IO:
        spec = importlib.util.find_spec('mmens')
        found = [f for d in spec.submodule_search_locations for suffix in
                 importlib.machinery.EXTENSION_SUFFIXES
                 for f in glob.glob(osp.join(d, '_results_io' + suffix))]
        module = None
        if found:
            loader = importlib.machinery.ExtensionFileLoader('mmens._results_io', found[0])
            module = importlib.util.module_from_spec(
                importlib.util.spec_from_file_location('mmens._results_io', found[0],
                                                       loader=loader))
            loader.exec_module(module)
        _IO.append(module)
    return _IO[0]


def _empty_columns(rows: int) -> Columns:
    return (np.empty(rows, np.int64), np.empty(rows, np.int64), np.empty((rows, 4)),
            np.empty(rows))


_DONE = 4  # results_io.cpp's state once the list is closed
_COLUMN_TYPES = (np.int64, np.int64, np.float64, np.float64)


def iter_results_columns(path: str, name: str, rows: int = 1 << 18, block: int = 1 << 24,
                         fields: Optional[set] = None) -> Iterator[Columns]:
    """The entries of a COCO-results file as :func:`read_results_columns`' columns, at
    most ``rows`` entries at a time, reading ``block`` bytes at a time: the memory is that
    of one block and one set of columns, whatever the size of the file.

    Raises :class:`NotPlainLayout` (possibly after some columns) where the file is not a
    list of plain ``{image_id, category_id, bbox, score}`` objects (invalid or truncated
    JSON, ``NaN``, a string, a missing field, ...): the caller reads it whole instead, and
    the general decoders' errors name the first bad entry. ``fields`` receives
    ``'segmentation'`` when an entry has masks (which are skipped here).
    """
    io = _results_io()
    if io is None:
        raise NotPlainLayout(path)
    if not osp.isfile(path):
        raise ValueError(f"member '{name}': prediction file {path} does not exist")
    buf, filled, start, state, eof = bytearray(block), 0, 0, 0, False
    with open(path, 'rb', buffering=0) as f:
        while True:
            while not eof and filled < len(buf):
                got = f.readinto(memoryview(buf)[filled:])
                eof, filled = not got, filled + got
            cols = _empty_columns(rows)
            ok, n, start, state, masks = io.decode_block(buf, start, filled, *cols, state)
            if not ok:
                raise NotPlainLayout(path)
            if masks and fields is not None:
                fields.add('segmentation')
            if n:
                yield tuple(c[:n] for c in cols)
            if n == rows:
                continue  # more entries in this block
            if eof:  # the list closed, nothing but white space after it
                if state != _DONE or bytes(buf[start:filled]).strip(b' \t\r\n'):
                    raise NotPlainLayout(path)
                return
            tail = filled - start  # an entry cut by the block's end: to the front
            buf[:tail] = buf[start:filled]
            if tail == len(buf):  # an entry longer than the block
                buf.extend(bytes(len(buf)))
            filled, start = tail, 0


def read_results_columns(path: str, name: Optional[str] = None) -> Columns:
    """Read a COCO-results file as columns ``image_ids [M]`` int64, ``category_ids [M]``
    int64, ``bboxes [M, 4]`` float64 ``x, y, w, h`` and ``scores [M]`` float64.

    Only the types are checked here (see :func:`validate_columns` for the values): a
    malformed file raises a ``ValueError`` naming the member, file, entry, image and field.
    """
    name = name or osp.splitext(osp.basename(path))[0]
    try:
        parts = list(iter_results_columns(path, name))
        if not parts:
            parts = [_empty_columns(0)]
        return tuple(np.concatenate(c) for c in zip(*parts))
    except NotPlainLayout:  # no compiled decoder, or not its layout
        return _read_whole(path, name)


def _read_whole(path: str, name: str) -> Columns:
    """:func:`read_results_columns` of a file outside the compiled decoder's layout:
    msgspec (typed), then the untyped path, whose error names the first bad entry."""
    with _mapped_bytes(path, name) as raw:
        try:
            entries = _DECODER.decode(raw)
            n = len(entries)
            get = operator.attrgetter
            return (np.fromiter(map(get('image_id'), entries), np.int64, n),
                    np.fromiter(map(get('category_id'), entries), np.int64, n),
                    np.fromiter(itertools.chain.from_iterable(map(get('bbox'), entries)),
                                np.float64, 4 * n).reshape(n, 4),
                    np.fromiter(map(get('score'), entries), np.float64, n))
        except (msgspec.DecodeError, OverflowError):  # ValidationError is a DecodeError
            pass  # not the typed layout (or an id beyond int64): find out what, below
    entries = _decode_untyped(_read_bytes(path, name), path, name)
    _raise_first_bad_entry(entries, name, path)
    return _to_arrays(entries, name, path)


def _where(name: str, source: str, idx: np.ndarray, image_ids: np.ndarray) -> str:
    first = int(idx[0])
    more = f' (and {len(idx) - 1} more entries)' if len(idx) > 1 else ''
    img = int(image_ids[first]) if len(image_ids) else -1
    return f"member '{name}' ({source}): entry {first} (image_id {img}){more}"


def _raise_first_bad_entry(entries: Sequence[dict], name: str, source: str) -> None:
    """Raise a ValueError naming the first malformed entry (only on the error path)."""
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise ValueError(f"member '{name}' ({source}): entry {i} is a "
                             f'{type(e).__name__}, expected an object')
        for key in REQUIRED_KEYS:
            if key not in e:
                raise ValueError(f"member '{name}' ({source}): entry {i} (image_id "
                                 f"{e.get('image_id')}): missing field '{key}'")
        bbox = e['bbox']
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"member '{name}' ({source}): entry {i} (image_id "
                             f"{e['image_id']}): field 'bbox' must be [x, y, w, h], "
                             f'got {bbox!r}')
        for key in ('image_id', 'category_id', 'score'):
            if not isinstance(e[key], (int, float)) or isinstance(e[key], bool):
                img = '' if key == 'image_id' else f" (image_id {e['image_id']!r})"
                raise ValueError(f"member '{name}' ({source}): entry {i}{img}: field "
                                 f"'{key}' must be a number, got {e[key]!r}")
        for x in bbox:
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise ValueError(f"member '{name}' ({source}): entry {i} (image_id "
                                 f"{e['image_id']!r}): field 'bbox' must hold 4 numbers, "
                                 f'got {bbox!r}')
        for key in ('image_id', 'category_id'):  # ids are int64: no fraction, in range
            v = e[key]
            if (isinstance(v, float) and not v.is_integer()) or not -2**63 <= v < 2**63:
                raise ValueError(f"member '{name}' ({source}): entry {i}: field "
                                 f"'{key}' must be an integer id, got {v!r}")


def _to_arrays(entries: Sequence[dict], name: str, source: str
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse entries into arrays; a malformed entry raises with its index."""
    try:
        image_ids = np.array([e['image_id'] for e in entries], dtype=np.int64)
        cat_ids = np.array([e['category_id'] for e in entries], dtype=np.int64)
        bboxes = np.array([e['bbox'] for e in entries], dtype=np.float64)
        scores = np.array([e['score'] for e in entries], dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):
        _raise_first_bad_entry(entries, name, source)
        raise
    if bboxes.ndim != 2 or bboxes.shape[1] != 4:
        _raise_first_bad_entry(entries, name, source)
    return image_ids, cat_ids, bboxes, scores


def validate_coco_results(entries: Sequence[dict],
                          name: str,
                          image_sizes: Mapping[int, Tuple[int, int]],
                          cat_ids: Sequence[int],
                          source: str = '<memory>',
                          repair: bool = False) -> MemberPredictions:
    """Validate COCO-results entries against an annotation file's images and categories.

    Args:
        entries (Sequence[dict]): COCO-results entries (``bbox`` is ``[x, y, w, h]`` pixels).
        name (str): member name, used in messages.
        image_sizes (Mapping[int, tuple[int, int]]): ``image_id -> (width, height)``.
        cat_ids (Sequence[int]): known COCO category ids.
        source (str): file the entries came from, used in messages.
        repair (bool): repair instead of raising where possible (see module doc).

    Returns:
        MemberPredictions: boxes as ``x1, y1, x2, y2`` pixels clipped to the image.
    """
    return validate_columns(_to_arrays(entries, name, source), name, image_sizes, cat_ids,
                            source, repair)


def _lookup(ids: np.ndarray, known: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(found [M] bool, pos [M])``: whether each id is in ``known`` (sorted, unique),
    and where (``pos`` is only meaningful where found). One binary search per id, where
    ``np.isin`` plus ``np.unique`` for the image sizes sorted the ids twice more."""
    pos = np.searchsorted(known, ids)
    pos[pos == len(known)] = 0
    found = known[pos] == ids if len(known) else np.zeros(len(ids), dtype=bool)
    return found, pos


#: the checks in the order they run, which is also the order of a ``report``'s keys
CHECKS = ('dropped_nonfinite_bbox', 'dropped_nonfinite_score', 'dropped_negative_size',
          'dropped_unknown_image_id', 'dropped_unknown_category_id', 'clipped_score',
          'clipped_to_image', 'dropped_zero_size')
_DROP_WHAT = {  # the checks that fail, or drop under repair, and what their error says
    'dropped_nonfinite_bbox': "field 'bbox' has a NaN or inf value",
    'dropped_nonfinite_score': "field 'score' is NaN or inf",
    'dropped_negative_size': "field 'bbox' has a negative width or height (x2 < x1 or "
                             'y2 < y1)',
    'dropped_unknown_image_id': "field 'image_id' is not an image of the annotation file",
    'dropped_unknown_category_id': "field 'category_id' is not a category of the "
                                   'annotation file'}


@dataclass
class MemberColumns:
    """One member's validated detections, compact (28 bytes per detection).

    Attributes:
        name (str): member name.
        images (np.ndarray): ``[M]`` int32, the position of each image id among the
            annotation file's image ids, sorted.
        categories (np.ndarray): ``[M]`` int32, the position of each category id among
            the known category ids, sorted and unique.
        bboxes (np.ndarray): ``[M, 4]`` float32 ``x1, y1, x2, y2`` pixels, inside the image.
        scores (np.ndarray): ``[M]`` float32 in [0, 1].
        report (dict): counts of repairs (:data:`CHECKS` order).
        has_masks (bool): whether the file's entries carry ``segmentation`` (not read
            here: ``fuse_results`` hands such files to its mask path).
        bounds (np.ndarray, optional): ``[G + 1]`` when read by groups of images
            (:func:`read_member_columns`): group ``g`` is ``bounds[g]:bounds[g + 1]``.
    """
    name: str
    images: np.ndarray
    categories: np.ndarray
    bboxes: np.ndarray
    scores: np.ndarray
    report: Dict[str, int] = field(default_factory=dict)
    has_masks: bool = False
    bounds: Optional[np.ndarray] = None


class ColumnValidator:
    """The checks of :func:`validate_columns` over a file's entries, a block of columns
    at a time: the same errors (the first failing check over the whole file, its first
    entry and the count of the others) and the same repairs and counts.

    Without ``repair`` an error is raised by :meth:`finish`, once every block is seen:
    until then a failing check only records its first entry and counts, so that the
    message is the one of a single pass over the file.
    """

    def __init__(self, name: str, image_sizes: Mapping[int, Tuple[int, int]],
                 cat_ids: Sequence[int], source: str = '<memory>',
                 repair: bool = False) -> None:
        self.name, self.source, self.repair = name, source, repair
        known = np.fromiter(image_sizes.keys(), dtype=np.int64, count=len(image_sizes))
        order = np.argsort(known)
        self.image_ids = known[order]  # sorted
        self.sizes = np.array(list(image_sizes.values()), dtype=np.float64).reshape(
            -1, 2)[order]  # [I, 2] width, height
        self.cat_ids = np.unique(np.asarray(list(cat_ids), dtype=np.int64))
        self.counts = dict.fromkeys(CHECKS, 0)
        self.first: Dict[str, tuple] = {}  # check -> (entry, image id, value) of its first
        self.seen = self.kept = 0

    def _flag(self, bad: np.ndarray, key: str, keep: np.ndarray, image_ids: np.ndarray,
              offset: int, values: Optional[np.ndarray] = None) -> bool:
        if self.repair:
            bad = bad & keep
        count = int(np.count_nonzero(bad))
        if count:
            self.counts[key] += count
            i = int(np.argmax(bad))
            self.first.setdefault(key, (offset + i, int(image_ids[i]),
                                        None if values is None else values[i]))
            if self.repair and key in _DROP_WHAT:
                keep &= ~bad
        return count > 0

    def add(self, columns: Columns) -> Optional[Tuple[np.ndarray, ...]]:
        """Check the next block of a file's columns (:func:`read_results_columns`) and
        return its valid detections as ``(images, categories, bboxes, scores)`` of
        :class:`MemberColumns` (None once an error is to be raised)."""
        image_ids, cats, xywh, scores = columns
        done = self._compact(columns)
        if done is not None:
            return done
        offset = self.seen
        self.seen += len(scores)
        keep = np.ones(len(scores), dtype=bool)
        flag = functools.partial(self._flag, keep=keep, image_ids=image_ids, offset=offset)
        flag(~np.isfinite(xywh).all(1), 'dropped_nonfinite_bbox')
        flag(~np.isfinite(scores), 'dropped_nonfinite_score')
        flag((xywh[:, 2] < 0) | (xywh[:, 3] < 0), 'dropped_negative_size')
        img_found, img_pos = _lookup(image_ids, self.image_ids)
        flag(~img_found, 'dropped_unknown_image_id')
        cat_found, cat_pos = _lookup(cats, self.cat_ids)
        flag(~cat_found, 'dropped_unknown_category_id')
        if flag((scores < 0) | (scores > 1), 'clipped_score', values=scores) and self.repair:
            scores = np.clip(scores, 0.0, 1.0)
        if self.first and not self.repair:
            return None  # finish() raises: no need for the boxes
        if not keep.all():  # only repair drops: the valid case keeps the arrays as they are
            image_ids, xywh, scores = image_ids[keep], xywh[keep], scores[keep]
            img_pos, cat_pos = img_pos[keep], cat_pos[keep]
        # imported here: a process that only reads files needs no torch (mmens.ops)
        from mmens.ops.boxes import xywh_to_xyxy
        xyxy = xywh_to_xyxy(xywh)  # clipped to the image as ensemble-boxes does
        wh = self.sizes[img_pos]
        clipped = np.clip(xyxy, 0, np.concatenate([wh, wh], axis=1))
        self.counts['clipped_to_image'] += int((np.abs(clipped - xyxy) > 1e-6).any(1).sum())
        degenerate = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        if self._flag(degenerate, 'dropped_zero_size', np.ones_like(degenerate), image_ids,
                      offset):
            if not self.repair:
                return None
            ok = ~degenerate
            img_pos, cat_pos, clipped, scores = (img_pos[ok], cat_pos[ok], clipped[ok],
                                                 scores[ok])
        self.kept += len(scores)
        return (img_pos.astype(np.int32), cat_pos.astype(np.int32),
                clipped.astype(np.float32), scores.astype(np.float32))

    def _compact(self, columns: Columns) -> Optional[Tuple[np.ndarray, ...]]:
        """The block in one compiled pass when every entry of it passes every check (no
        error, no repair; clipped boxes counted), else None: the numpy checks then."""
        io, m = _results_io(), len(columns[3])
        if io is None or m == 0:
            return None
        out = (np.empty(m, np.int32), np.empty(m, np.int32), np.empty((m, 4), np.float32),
               np.empty(m, np.float32))
        ok, clipped = io.compact_block(
            *(np.ascontiguousarray(c, dtype=t) for c, t in zip(columns, _COLUMN_TYPES)),
            self.image_ids, self.sizes, self.cat_ids, *out)
        if not ok:
            return None
        self.seen, self.kept = self.seen + m, self.kept + m
        self.counts['clipped_to_image'] += clipped
        return out

    def _where(self, key: str) -> str:
        entry, image_id, _ = self.first[key]
        more = self.counts[key] - 1
        more = f' (and {more} more entries)' if more else ''
        return f"member '{self.name}' ({self.source}): entry {entry} (image_id {image_id}){more}"

    def finish(self) -> Dict[str, int]:
        """The report (counts of repairs), once every block is added; or the error."""
        if self.seen == 0:
            raise ValueError(f"member '{self.name}' ({self.source}): has no predictions at "
                             'all (empty member); remove it from the ensemble or check the '
                             'file')
        if not self.repair:
            for key, what in _DROP_WHAT.items():
                if key in self.first:
                    raise ValueError(f'{self._where(key)}: {what}. Fix the file, or pass '
                                     'repair=True / --repair to drop such entries with a '
                                     'count.')
            if 'clipped_score' in self.first:
                raise ValueError(f"{self._where('clipped_score')}: field 'score' is "
                                 f"{self.first['clipped_score'][2]}, outside [0, 1]. Fix "
                                 'the file, or pass repair=True / --repair to clip scores '
                                 'into [0, 1].')
            if 'dropped_zero_size' in self.first:
                raise ValueError(f"{self._where('dropped_zero_size')}: field 'bbox' has "
                                 'zero width or height (after clipping to the image). Pass '
                                 'repair=True / --repair to drop such entries with a count.')
        report = {k: v for k, v in self.counts.items() if v}
        if self.kept == 0:
            raise ValueError(f"member '{self.name}' ({self.source}): no valid prediction "
                             f'left after repair ({report})')
        return report


def _grouped(parts: list, group_of: np.ndarray, n_groups: int) -> tuple:
    """The columns of ``parts`` (``(images, ...)`` blocks) as one array each, ordered by
    ``group_of[image]`` (stable: file order within a group; group -1 dropped), and the
    bounds ``[G + 1]`` of the groups. Each part is written into place, then freed: the
    memory is that of the result, plus the parts not yet written (not twice the result,
    as a concatenation and a sort would take)."""
    keys = [group_of[p[0]] for p in parts]
    sizes = np.zeros(n_groups + 1, dtype=np.int64)
    for k in keys:
        sizes += np.bincount(k + 1, minlength=n_groups + 1)
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(sizes[1:], out=bounds[1:])
    out = [np.empty((bounds[-1], ) + a.shape[1:], dtype=a.dtype) for a in parts[0]]
    fill = bounds[:-1].copy()  # where each group's next detection goes
    for i, k in enumerate(keys):
        part, parts[i] = parts[i], None
        keep = np.flatnonzero(k >= 0)
        order = keep[np.argsort(k[keep], kind='stable')]
        ks = k[order]
        counts = np.bincount(ks, minlength=n_groups)
        pos = fill[ks] + np.arange(len(ks)) - (np.cumsum(counts) - counts)[ks]
        for col, a in zip(out, part):
            col[pos] = a[order]
        fill += counts
        del part
    return out, bounds


def read_member_columns(path: str, name: str, image_sizes: Mapping[int, Tuple[int, int]],
                        cat_ids: Sequence[int], repair: bool = False,
                        groups: Optional[Tuple[np.ndarray, int]] = None) -> MemberColumns:
    """Read and validate one member's file a block at a time (:func:`iter_results_columns`,
    :class:`ColumnValidator`): the memory is that of the compact columns, plus one block.
    A file that is not in the compiled decoder's layout is read whole instead.

    ``groups``: ``(group of each image [I] int (-1: leave the image out), G)``, the image
    indexed by its position among the sorted ids of ``image_sizes``; the columns then come
    ordered by group (see ``bounds``), file order within a group."""
    check, fields = ColumnValidator(name, image_sizes, cat_ids, path, repair), set()
    try:
        parts = [check.add(block) for block in iter_results_columns(path, name,
                                                                    fields=fields)]
    except NotPlainLayout:
        check = ColumnValidator(name, image_sizes, cat_ids, path, repair)
        parts = [check.add(_read_whole(path, name))]  # the compiled decoder already failed
        if _mentions(path, b'"segmentation"'):
            fields.add('segmentation')
    report = check.finish()
    if groups is None:
        columns, bounds = [np.concatenate(c) for c in zip(*parts)], None
    else:
        columns, bounds = _grouped(parts, *groups)
    return MemberColumns(name, *columns, report=report, has_masks='segmentation' in fields,
                         bounds=bounds)


def _mentions(path: str, text: bytes, block: int = 1 << 24) -> bool:
    """Whether the file holds ``text`` (read a block at a time, overlapping)."""
    with open(path, 'rb') as f:
        tail = b''
        while True:
            data = f.read(block)
            if not data:
                return False
            if text in tail + data:
                return True
            tail = data[-len(text):]


def validate_columns(columns: Columns,
                     name: str,
                     image_sizes: Mapping[int, Tuple[int, int]],
                     cat_ids: Sequence[int],
                     source: str = '<memory>',
                     repair: bool = False) -> MemberPredictions:
    """:func:`validate_coco_results` on columns (:func:`read_results_columns`): every
    check is one vectorised pass over the entries (:class:`ColumnValidator`)."""
    check = ColumnValidator(name, image_sizes, cat_ids, source, repair)
    part = check.add(columns) if len(columns[3]) else None
    report = check.finish()
    images, cats, boxes, scores = part
    return MemberPredictions(name=name, image_ids=check.image_ids[images],
                             bboxes=boxes, scores=scores,
                             category_ids=check.cat_ids[cats], report=report)


def load_member_predictions(path: str, image_sizes: Mapping[int, Tuple[int, int]],
                            cat_ids: Sequence[int], name: Optional[str] = None,
                            repair: bool = False) -> MemberPredictions:
    """Read and validate one member's COCO-results file (see :func:`validate_coco_results`)."""
    name = name or osp.splitext(osp.basename(path))[0]
    return validate_columns(read_results_columns(path, name), name, image_sizes, cat_ids,
                            source=path, repair=repair)


def _json_numbers(a: np.ndarray) -> List[bytes]:
    """The JSON text of each number of a 1-D array (orjson: integers as integers, floats
    as the shortest text that reads back as the same float64, as Python's ``repr``)."""
    text = orjson.dumps(np.ascontiguousarray(a), option=orjson.OPT_SERIALIZE_NUMPY)
    return text[1:-1].split(b',')  # '[1,2,3]' -> [b'1', b'2', b'3']


def _results_chunk(image_ids: np.ndarray, category_ids: np.ndarray, bboxes: np.ndarray,
                   scores: np.ndarray) -> bytes:
    """``{"image_id":..,"category_id":..,"bbox":[x,y,w,h],"score":..},...`` of one chunk.

    orjson writes each column at once; a single ``join`` interleaves the columns with the
    keys, so no per-detection dict is built (for 504k detections: 0.36 s, against 0.57 s
    for dicts + ``orjson.dumps`` with the collector paused, 2.2 s with it running, and
    about 20 s for ``json.dump``)."""
    n = len(scores)
    parts = [b'},{"image_id":'] * (8 * n)
    parts[1::8] = _json_numbers(image_ids)
    parts[2::8] = [b',"category_id":'] * n
    parts[3::8] = _json_numbers(category_ids)
    parts[4::8] = [b',"bbox":['] * n
    rows = orjson.dumps(np.ascontiguousarray(bboxes), option=orjson.OPT_SERIALIZE_NUMPY)
    parts[5::8] = rows[2:-2].split(b'],[')  # '[[x,y,w,h],...]' -> 'x,y,w,h' per detection
    parts[6::8] = [b'],"score":'] * n
    parts[7::8] = _json_numbers(scores)
    return b''.join(parts)[2:] + b'}'  # drop the leading '},'


def results_text(image_ids: np.ndarray, category_ids: np.ndarray, bboxes: np.ndarray,
                 scores: np.ndarray, chunk: int = 1 << 15) -> bytes:
    """The entries of a COCO-results list, comma-separated, without the brackets (see
    :func:`write_results_json`); the text of a list is the same for any split of it.

    The compiled ``format_results`` writes the text of :func:`_results_chunk` byte for
    byte (tests/test_datasets/test_results_text.py) in a third of its time (6 against
    18 ms for 25,200 detections), with the GIL released."""
    image_ids = np.ascontiguousarray(image_ids, dtype=np.int64)
    category_ids = np.ascontiguousarray(category_ids, dtype=np.int64)
    bboxes = np.ascontiguousarray(np.asarray(bboxes, dtype=np.float64).reshape(-1, 4))
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    io = _results_io()
    if io is not None:
        return io.format_results(image_ids, category_ids, bboxes, scores)
    return b','.join(_results_chunk(image_ids[s:s + chunk], category_ids[s:s + chunk],
                                    bboxes[s:s + chunk], scores[s:s + chunk])
                     for s in range(0, len(scores), chunk))


class ResultsWriter:
    """A COCO-results file written a part at a time (:func:`results_text`), into a
    temporary file renamed to ``path`` on success: an interrupted run leaves no partial
    file under ``path``. Use as a context manager."""

    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, f'{path}.{os.getpid()}.part'
        self.file = open(self.tmp, 'wb')
        self.file.write(b'[')
        self.empty = True

    def write_text(self, text: bytes) -> None:
        if text:
            self.file.write(text if self.empty else b',' + text)
            self.empty = False

    def __enter__(self) -> 'ResultsWriter':
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.file.write(b']')
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def write_results_json(path: str, image_ids: np.ndarray, category_ids: np.ndarray,
                       bboxes: np.ndarray, scores: np.ndarray, chunk: int = 1 << 15) -> None:
    """Write a COCO-results JSON file from columns, ``chunk`` detections at a time.

    ``bboxes`` is ``[D, 4]`` ``x, y, w, h``. Integer ids are written as integers and
    float64 values as the shortest text that reads back as the same float64, the numbers
    that ``json.dump`` of the same values as Python floats writes (possibly spelled
    differently, e.g. ``1e-6`` for ``1e-06``). Non-finite values are written as ``null``:
    the callers write validated or fused detections, which have none.
    """
    scores = np.asarray(scores, dtype=np.float64)
    with ResultsWriter(path) as out:
        for s in range(0, len(scores), chunk):
            out.write_text(results_text(image_ids[s:s + chunk], category_ids[s:s + chunk],
                                        np.asarray(bboxes).reshape(-1, 4)[s:s + chunk],
                                        scores[s:s + chunk], chunk))


def index_in(ids: np.ndarray, known: Sequence[int]) -> np.ndarray:
    """Position of each of ``ids`` in ``known`` (vectorised; every id must be known,
    which :func:`validate_coco_results` guarantees). Returns ``[M]`` int64."""
    known = np.asarray(known, dtype=np.int64)
    order = np.argsort(known, kind='stable')
    return order[np.searchsorted(known[order], np.asarray(ids, dtype=np.int64))]


def member_name(spec: Union[str, dict]) -> str:
    """Name of a member given as a file path, a name, or ``dict(name=..., file=...)``."""
    if isinstance(spec, dict):
        if 'name' in spec:
            return spec['name']
        return osp.splitext(osp.basename(spec['file']))[0]
    return osp.splitext(osp.basename(spec))[0]
