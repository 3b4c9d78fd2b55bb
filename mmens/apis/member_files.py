"""Member COCO-results files → one packed batch over all images of an annotation file."""
import contextlib
import io
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor

from mmens.datasets.coco_results import (MemberPredictions, index_in,
                                         load_member_predictions)
from mmens.evaluation.coco_eval import results_to_coco  # noqa: F401  (re-exported)


def load_coco(ann_file: str) -> COCO:
    """pycocotools ``COCO`` without its prints; a clear error for a missing/corrupt file."""
    if not osp.isfile(ann_file):
        raise ValueError(f'annotation file {ann_file} does not exist')
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(ann_file)
    except Exception as e:  # pycocotools raises bare asserts / JSON errors
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
    """
    names: List[str]
    img_ids: List[int]
    cat_ids: List[int]
    packed: Dict[str, Tensor]
    members: List[MemberPredictions]


def load_member_batch(coco: COCO, files: Sequence[str], names: Optional[Sequence[str]] = None,
                      cat_ids: Optional[Sequence[int]] = None,
                      repair: bool = False) -> MemberBatch:
    """Read, validate and pack member files (see :mod:`mmens.datasets.coco_results`).

    Args:
        coco (COCO): ground truth (images and categories).
        files (Sequence[str]): one COCO-results JSON per member.
        names (Sequence[str], optional): member names (default: file stems).
        cat_ids (Sequence[int], optional): category id of each label index (default: the
            annotation file's ids, sorted).
        repair (bool): repair bad entries instead of raising (counts in ``report``).
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
    for m, (f, name) in enumerate(zip(files, names)):
        preds = load_member_predictions(f, sizes, cat_ids, name=name, repair=repair)
        members.append(preds)
        parts.append(dict(
            bboxes=torch.from_numpy(preds.bboxes),
            scores=torch.from_numpy(preds.scores),
            labels=torch.from_numpy(index_in(preds.category_ids, cat_ids)),
            members=torch.full((len(preds),), m, dtype=torch.long),
            images=torch.from_numpy(index_in(preds.image_ids, img_ids))))
    packed = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    packed['image_sizes'] = torch.tensor([sizes[i] for i in img_ids], dtype=torch.float32)
    return MemberBatch(names, img_ids, cat_ids, packed, members)


def select_images(packed: Dict[str, Tensor], start: int, stop: int) -> Dict[str, Tensor]:
    """The part of a packed batch for images ``start <= i < stop``, re-indexed from 0."""
    keep = (packed['images'] >= start) & (packed['images'] < stop)  # [M]
    out = {k: v[keep] for k, v in packed.items() if k != 'image_sizes'}
    out['images'] = out['images'] - start
    out['image_sizes'] = packed['image_sizes'][start:stop]
    return out


def member_results(preds: MemberPredictions) -> List[dict]:
    """A validated member back as COCO-results entries (for scoring it)."""
    b = preds.bboxes.astype(np.float64)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    return [dict(image_id=int(i), category_id=int(c), bbox=bb.tolist(), score=float(s))
            for i, c, bb, s in zip(preds.image_ids, preds.category_ids, xywh, preds.scores)]
