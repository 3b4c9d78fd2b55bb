"""Reading and validating COCO-results files (one detector member each).

A COCO-results file is a JSON list of ``{image_id, category_id, bbox: [x, y, w, h], score}``
in pixels, as written by mmdet's ``CocoMetric(format_only=True)``, detectron2, YOLO exporters or
``tools/analysis_tools/dump_predictions.py``. Every check is vectorised over entries and every failure names the
member, the file, the entry index, the image id and the field.

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

Reading is typed: msgspec decodes a file straight into ``{image_id: int, category_id: int,
bbox: 4 numbers, score: number}`` records, checking the types while it decodes, and the
checks above run over the resulting columns (a 45 MB member of 500k entries: 0.4 s CPU,
against 2 s for ``json.load`` into dicts and the arrays made from them). A file that does not decode that way (a wrong type, a missing
field, ``NaN`` written by Python's ``json``, truncated JSON, ...) is read again untyped, so
that its error names the first malformed entry exactly as before; only the error path pays
for that second read.
"""
import contextlib
import gc
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


def read_results_columns(path: str, name: Optional[str] = None) -> Columns:
    """Read a COCO-results file as columns ``image_ids [M]`` int64, ``category_ids [M]``
    int64, ``bboxes [M, 4]`` float64 ``x, y, w, h`` and ``scores [M]`` float64.

    Only the types are checked here (see :func:`validate_columns` for the values): a
    malformed file raises a ``ValueError`` naming the member, file, entry, image and field.
    """
    name = name or osp.splitext(osp.basename(path))[0]
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


def _clip_to_images(columns: Columns, wh: np.ndarray, name: str, source: str,
                    repair: bool, report: Dict[str, int]) -> Columns:
    """Clip xywh boxes to their image (``wh`` [M, 2]) as xyxy, as ensemble-boxes
    does, counting clips in ``report``; zero-size boxes fail, or drop under repair."""
    image_ids, cats, xywh, scores = columns
    # imported here: fuse_results' reader process loads this module to decode files while
    # torch is being imported elsewhere; mmens.ops at the top would import torch in it too
    from mmens.ops.boxes import xywh_to_xyxy
    xyxy = xywh_to_xyxy(xywh)
    clipped = np.clip(xyxy, 0, np.concatenate([wh, wh], axis=1))
    n_clipped = int((np.abs(clipped - xyxy) > 1e-6).any(1).sum())
    if n_clipped:
        report['clipped_to_image'] = n_clipped
    degenerate = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if degenerate.any():
        if not repair:
            idx = np.flatnonzero(degenerate)
            raise ValueError(f'{_where(name, source, idx, image_ids)}: field \'bbox\' '
                             'has zero width or height (after clipping to the image). '
                             'Pass repair=True / --repair to drop such entries with a count.')
        report['dropped_zero_size'] = int(degenerate.sum())
        ok = ~degenerate
        image_ids, cats, clipped, scores = image_ids[ok], cats[ok], clipped[ok], scores[ok]
    return image_ids, cats, clipped, scores


def validate_columns(columns: Columns,
                     name: str,
                     image_sizes: Mapping[int, Tuple[int, int]],
                     cat_ids: Sequence[int],
                     source: str = '<memory>',
                     repair: bool = False) -> MemberPredictions:
    """:func:`validate_coco_results` on columns (:func:`read_results_columns`): every
    check is one vectorised pass over the entries, the messages are the same."""
    image_ids, cats, xywh, scores = columns
    if len(scores) == 0:
        raise ValueError(f"member '{name}' ({source}): has no predictions at all "
                         '(empty member); remove it from the ensemble or check the file')
    report: Dict[str, int] = {}
    keep = np.ones(len(scores), dtype=bool)

    def fail_or_drop(bad: np.ndarray, what: str, key: str) -> None:
        bad = bad & keep
        if not bad.any():
            return
        idx = np.flatnonzero(bad)
        if not repair:
            raise ValueError(f'{_where(name, source, idx, image_ids)}: {what}. '
                             'Fix the file, or pass repair=True / --repair to drop '
                             'such entries with a count.')
        report[key] = report.get(key, 0) + int(bad.sum())
        keep[bad] = False

    fail_or_drop(~np.isfinite(xywh).all(1), "field 'bbox' has a NaN or inf value",
                 'dropped_nonfinite_bbox')
    fail_or_drop(~np.isfinite(scores), "field 'score' is NaN or inf", 'dropped_nonfinite_score')
    fail_or_drop((xywh[:, 2] < 0) | (xywh[:, 3] < 0),
                 "field 'bbox' has a negative width or height (x2 < x1 or y2 < y1)",
                 'dropped_negative_size')
    known_imgs = np.fromiter(image_sizes.keys(), dtype=np.int64, count=len(image_sizes))
    order = np.argsort(known_imgs)
    known_imgs = known_imgs[order]
    img_found, img_pos = _lookup(image_ids, known_imgs)
    fail_or_drop(~img_found, "field 'image_id' is not an image of the annotation file",
                 'dropped_unknown_image_id')
    fail_or_drop(~_lookup(cats, np.unique(np.asarray(list(cat_ids), dtype=np.int64)))[0],
                 "field 'category_id' is not a category of the annotation file",
                 'dropped_unknown_category_id')
    bad_score = keep & ((scores < 0) | (scores > 1))
    if bad_score.any():
        if not repair:
            idx = np.flatnonzero(bad_score)
            raise ValueError(f'{_where(name, source, idx, image_ids)}: field \'score\' '
                             f'is {scores[idx[0]]}, outside [0, 1]. Fix the file, or pass '
                             'repair=True / --repair to clip scores into [0, 1].')
        report['clipped_score'] = int(bad_score.sum())
        scores = np.clip(scores, 0.0, 1.0)

    if not keep.all():  # only repair drops: the valid case keeps the arrays as they are
        image_ids, cats, xywh, scores = image_ids[keep], cats[keep], xywh[keep], scores[keep]
        img_pos = img_pos[keep]
    sizes = np.array(list(image_sizes.values()), dtype=np.float64).reshape(-1, 2)[order]
    image_ids, cats, clipped, scores = _clip_to_images(
        (image_ids, cats, xywh, scores), sizes[img_pos], name, source, repair, report)
    if len(scores) == 0:
        raise ValueError(f"member '{name}' ({source}): no valid prediction left after "
                         f'repair ({report})')
    return MemberPredictions(name=name, image_ids=image_ids,
                             bboxes=clipped.astype(np.float32),
                             scores=scores.astype(np.float32), category_ids=cats,
                             report=report)


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


def write_results_json(path: str, image_ids: np.ndarray, category_ids: np.ndarray,
                       bboxes: np.ndarray, scores: np.ndarray, chunk: int = 1 << 15) -> None:
    """Write a COCO-results JSON file from columns, ``chunk`` detections at a time.

    ``bboxes`` is ``[D, 4]`` ``x, y, w, h``. Integer ids are written as integers and
    float64 values as the shortest text that reads back as the same float64, the numbers
    that ``json.dump`` of the same values as Python floats writes (possibly spelled
    differently, e.g. ``1e-6`` for ``1e-06``). Non-finite values are written as ``null``:
    the callers write validated or fused detections, which have none.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    category_ids = np.asarray(category_ids, dtype=np.int64)
    bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    with open(path, 'wb') as f:
        f.write(b'[')
        for start in range(0, len(scores), chunk):
            end = start + chunk
            if start:
                f.write(b',')
            f.write(_results_chunk(image_ids[start:end], category_ids[start:end],
                                   bboxes[start:end], scores[start:end]))
        f.write(b']')


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
