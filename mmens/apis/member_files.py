"""Member COCO-results files → one packed batch over all images of an annotation file."""
import contextlib
import io
import json
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import msgspec
import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor

from mmens.datasets.coco_results import (Columns, MemberPredictions, gc_paused, index_in,
                                         read_results_columns, validate_columns)
from mmens.evaluation.coco_eval import results_to_coco  # noqa: F401  (re-exported)
from mmens.ops.boxes import xyxy_to_xywh
from mmens.ops.packed import select_images as slice_images


class _ImagesAndCategories(msgspec.Struct):
    """The parts of a COCO annotation file that fusion needs; the rest of the file is
    parsed over without building objects (``annotations`` is most of a COCO file)."""
    images: List[Dict[str, Any]]
    categories: List[Dict[str, Any]]


def load_coco(ann_file: str, annotations: bool = True,
              decoded: Optional[Any] = None) -> COCO:
    """pycocotools ``COCO`` without its prints; a clear error for a missing/corrupt file.

    The file is decoded here (msgspec with the collector paused: 3x faster than the
    ``json.load`` inside ``COCO(ann_file)`` on a COCO-val-sized file), then indexed by
    pycocotools as ``COCO(ann_file)`` does. stdlib ``json`` reads what msgspec refuses
    (``NaN``) and words the error of a corrupt file. ``annotations=False`` keeps only the
    images and categories (enough to validate and fuse, not to evaluate); ``decoded``
    gives them as decoded already (``.images``, ``.categories``: fuse_results' prefetch
    thread has them; 35 ms of decoding at 5,040 images), instead of the file.
    """
    if not osp.isfile(ann_file):
        raise ValueError(f'annotation file {ann_file} does not exist')
    if decoded is not None and not annotations:
        dataset = dict(images=decoded.images, categories=decoded.categories, annotations=[])
        return _indexed(ann_file, dataset)
    try:
        with open(ann_file, 'rb') as f:
            raw = f.read()
        try:
            with gc_paused():
                if annotations:
                    dataset = msgspec.json.decode(raw)
                else:
                    part = msgspec.json.decode(raw, type=_ImagesAndCategories)
                    dataset = dict(images=part.images, categories=part.categories,
                                   annotations=[])
        except msgspec.DecodeError:
            with gc_paused():
                dataset = json.loads(raw)
        del raw
    except Exception as e:  # JSON errors
        raise ValueError(f'annotation file {ann_file} could not be read as COCO: {e}') from e
    return _indexed(ann_file, dataset)


def _indexed(ann_file: str, dataset: Any) -> COCO:
    """``COCO`` of a decoded annotation file, indexed (one line for what it refuses)."""
    try:
        if not isinstance(dataset, dict):
            raise ValueError(f'annotation file format {type(dataset)} not supported')
        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    except Exception as e:  # pycocotools raises bare asserts
        raise ValueError(f'annotation file {ann_file} could not be read as COCO: {e}') from e


@dataclass
class MemberBatch:
    """All members' validated predictions over the images of an annotation file.

    Attributes:
        names (list[str]): member names, in member-index order.
        img_ids (list[int]): COCO image ids; ``images`` indexes into it.
        cat_ids (list[int]): COCO category ids; ``labels`` indexes into it.
        packed (dict): ``bboxes [M, 4]`` pixels, ``scores [M]``, ``labels [M]``,
            ``members [M]``, ``images [M]``, ``image_sizes [I, 2]`` ``(width, height)``.
        members (list[MemberPredictions]): the validated per-member predictions.
        seconds (dict): wall seconds spent reading (``read``: decoding the files into
            columns) and validating and packing them (``validate``).
    """
    names: List[str]
    img_ids: List[int]
    cat_ids: List[int]
    packed: Dict[str, Tensor]
    members: List[MemberPredictions]
    seconds: Dict[str, float] = field(default_factory=dict)


def load_member_batch(coco: COCO, files: Sequence[str], names: Optional[Sequence[str]] = None,
                      cat_ids: Optional[Sequence[int]] = None, repair: bool = False,
                      read: Callable[[str, str], Columns] = read_results_columns
                      ) -> MemberBatch:
    """Read, validate and pack member files (see :mod:`mmens.datasets.coco_results`).

    Args:
        coco (COCO): ground truth (images and categories).
        files (Sequence[str]): one COCO-results JSON per member.
        names (Sequence[str], optional): member names (default: file stems).
        cat_ids (Sequence[int], optional): category id of each label index (default: the
            annotation file's ids, sorted).
        repair (bool): repair bad entries instead of raising (counts in ``report``).
        read (callable): ``read(file, name)`` → the file's columns, called in file order
            (default :func:`read_results_columns`; ``fuse_results`` passes the columns
            that a reader process decoded during its start-up).
    """
    if len(files) == 0:
        raise ValueError('no member prediction files given')
    names = list(names) if names else [osp.splitext(osp.basename(f))[0] for f in files]
    if len(names) != len(files):
        raise ValueError(f'{len(names)} names for {len(files)} prediction files')
    if len(set(names)) != len(names):
        raise ValueError(f'member names must be unique, got {names}')
    img_ids = sorted(coco.getImgIds())
    imgs = coco.loadImgs(img_ids)
    sizes = {im['id']: (im['width'], im['height']) for im in imgs}
    cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco.getCatIds())
    members, parts = [], []
    seconds = dict(read=0.0, validate=0.0)
    for m, (f, name) in enumerate(zip(files, names)):
        t0 = time.perf_counter()
        columns = read(f, name)
        t1 = time.perf_counter()
        preds = validate_columns(columns, name, sizes, cat_ids, source=f, repair=repair)
        del columns  # the float64 columns of one member at a time, not of all
        members.append(preds)
        parts.append(dict(
            bboxes=torch.from_numpy(preds.bboxes),
            scores=torch.from_numpy(preds.scores),
            labels=torch.from_numpy(index_in(preds.category_ids, cat_ids)),
            members=torch.full((len(preds),), m, dtype=torch.long),
            images=torch.from_numpy(index_in(preds.image_ids, img_ids))))
        seconds['read'] += t1 - t0
        seconds['validate'] += time.perf_counter() - t1
    t0 = time.perf_counter()
    packed = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    packed['image_sizes'] = torch.tensor([sizes[i] for i in img_ids], dtype=torch.float32)
    seconds['validate'] += time.perf_counter() - t0
    return MemberBatch(names, img_ids, cat_ids, packed, members, seconds)


def select_images(packed: Dict[str, Tensor], start: int, stop: int) -> Dict[str, Tensor]:
    """The part of a packed batch for images ``start <= i < stop``, re-indexed from 0."""
    return slice_images(packed, range(start, min(stop, len(packed['image_sizes']))))


def member_results(preds: MemberPredictions) -> List[dict]:
    """A validated member back as COCO-results entries (for scoring it)."""
    xywh = xyxy_to_xywh(preds.bboxes.astype(np.float64))
    return [dict(image_id=int(i), category_id=int(c), bbox=bb.tolist(), score=float(s))
            for i, c, bb, s in zip(preds.image_ids, preds.category_ids, xywh, preds.scores)]
