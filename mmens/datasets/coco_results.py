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
"""
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

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


def read_results_json(path: str, name: Optional[str] = None) -> List[dict]:
    """Read a COCO-results JSON file with errors that name the member and file."""
    name = name or osp.splitext(osp.basename(path))[0]
    if not osp.isfile(path):
        raise ValueError(f"member '{name}': prediction file {path} does not exist")
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"member '{name}': {path} is not valid JSON "
                         f'(truncated or corrupt?): {e}') from None
    if not isinstance(data, list):
        raise ValueError(f"member '{name}': {path} must hold a JSON list of "
                         f'{{image_id, category_id, bbox, score}} entries, '
                         f'got {type(data).__name__}')
    return data


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
                raise ValueError(f"member '{name}' ({source}): entry {i}: field "
                                 f"'{key}' must be a number, got {e[key]!r}")


def _to_arrays(entries: Sequence[dict], name: str, source: str
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse entries into arrays; a malformed entry raises with its index."""
    try:
        image_ids = np.array([e['image_id'] for e in entries], dtype=np.int64)
        cat_ids = np.array([e['category_id'] for e in entries], dtype=np.int64)
        bboxes = np.array([e['bbox'] for e in entries], dtype=np.float64)
        scores = np.array([e['score'] for e in entries], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
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
    if len(entries) == 0:
        raise ValueError(f"member '{name}' ({source}): has no predictions at all "
                         '(empty member); remove it from the ensemble or check the file')
    image_ids, cats, xywh, scores = _to_arrays(entries, name, source)
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
    fail_or_drop(~np.isin(image_ids, known_imgs),
                 "field 'image_id' is not an image of the annotation file",
                 'dropped_unknown_image_id')
    fail_or_drop(~np.isin(cats, np.asarray(list(cat_ids), dtype=np.int64)),
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

    image_ids, cats, xywh, scores = image_ids[keep], cats[keep], xywh[keep], scores[keep]
    sizes = np.array([image_sizes[int(i)] for i in np.unique(image_ids)], dtype=np.float64)
    wh = np.zeros((len(image_ids), 2))
    if len(image_ids):
        _, inv = np.unique(image_ids, return_inverse=True)
        wh = sizes[inv]  # [M, 2]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    clipped = np.stack([np.clip(xyxy[:, 0], 0, wh[:, 0]), np.clip(xyxy[:, 1], 0, wh[:, 1]),
                        np.clip(xyxy[:, 2], 0, wh[:, 0]), np.clip(xyxy[:, 3], 0, wh[:, 1])], 1)
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
    entries = read_results_json(path, name)
    return validate_coco_results(entries, name, image_sizes, cat_ids, source=path,
                                 repair=repair)


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
