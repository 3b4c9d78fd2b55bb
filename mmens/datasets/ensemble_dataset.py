"""COCO images with the cached predictions of several detector members."""
import json
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmdet.datasets import CocoDataset
from mmens.registry import DATASETS
from mmengine.logging import print_log

from mmens.ops.masks import MaskRuns
from .coco_masks import read_member_masks
from .coco_results import index_in, load_member_predictions, member_name


def fold_image_ids(img_ids: Sequence[int], num_folds: int, index: int, split: str,
                   seed: int = 0) -> List[int]:
    """Image ids of one split of a seeded k-fold partition (by image, not by box).

    Args:
        img_ids (Sequence[int]): all image ids.
        num_folds (int): k >= 2.
        index (int): which fold, ``0 <= index < num_folds``.
        split (str): ``'val'`` keeps the fold, ``'train'`` keeps the other folds.
        seed (int): permutation seed; the same seed gives the same folds everywhere.
    """
    if num_folds < 2 or not 0 <= index < num_folds:
        raise ValueError(f'fold: need num_folds >= 2 and 0 <= index < num_folds, got '
                         f'num_folds={num_folds}, index={index}')
    if split not in ('train', 'val'):
        raise ValueError(f"fold: split must be 'train' or 'val', got {split!r}")
    ids = np.array(sorted(img_ids), dtype=np.int64)
    perm = np.random.RandomState(seed).permutation(len(ids))
    in_fold = np.zeros(len(ids), dtype=bool)
    in_fold[perm[index::num_folds]] = True
    chosen = ids[in_fold] if split == 'val' else ids[~in_fold]
    return chosen.tolist()


@DATASETS.register_module()
class CocoEnsembleDataset(CocoDataset):
    """A COCO dataset whose samples also carry the cached predictions of N members.

    Each member is a COCO-results JSON file (any framework). The files are read once,
    validated against the annotation file (see :mod:`mmens.datasets.coco_results`) and
    packed per image as ``data_info['member_preds']`` with

    * ``bboxes``: ``[M, 4]`` float32 ``x1, y1, x2, y2`` pixels,
    * ``scores``: ``[M]`` float32, ``labels``: ``[M]`` int64 (contiguous class index),
    * ``members``: ``[M]`` int64 member index (order of ``members``).

    Args:
        members (Sequence[str | dict]): member names, whose files are
            ``<data_root>/<pred_prefix>/<name>.json``, or ``dict(name=..., file=...)``.
        pred_prefix (str): folder of the member files, relative to ``data_root``.
        members_meta (str, optional): JSON list with ``name`` and ``seconds_per_image``
            per member (the ``members.json`` of the embedded data), relative to ``data_root``.
        repair (bool): repair bad entries instead of raising (counts are logged).
        with_masks (bool): also read each entry's ``segmentation`` (RLE or polygons,
            validated) into ``data_info['member_masks']``: the ``(starts, ends, offsets)``
            of the image's member masks as runs (:class:`mmens.ops.masks.MaskRuns`), one
            per box of ``member_preds``, for ``MaskFusionDetector``.
        img_ids (Sequence[int], optional): keep only these images (before ``fold``).
        fold (dict, optional): ``dict(num_folds=5, index=0, split='train'|'val', seed=0)``:
            keep only the images of one split of a k-fold partition (of the kept images).
        **kwargs: :class:`mmdet.datasets.CocoDataset` arguments.
    """

    def __init__(self,
                 *args,
                 members: Sequence[Union[str, dict]] = (),
                 pred_prefix: str = '',
                 members_meta: Optional[str] = None,
                 repair: bool = False,
                 with_masks: bool = False,
                 fold: Optional[dict] = None,
                 img_ids: Optional[Sequence[int]] = None,
                 **kwargs) -> None:
        if len(members) == 0:
            raise ValueError('CocoEnsembleDataset needs at least one member')
        names = [member_name(m) for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f'CocoEnsembleDataset: member names must be unique, got {names}')
        self.member_specs = list(members)
        self.member_names = names
        self.pred_prefix = pred_prefix
        self.members_meta = members_meta
        self.repair = repair
        self.with_masks = with_masks
        if with_masks and repair:  # a dropped entry would leave its mask behind
            raise ValueError('CocoEnsembleDataset: with_masks=True reads the files as they '
                             'are; repair=True would drop boxes: fix the files instead')
        self.fold = dict(fold) if fold else None
        self.keep_img_ids = None if img_ids is None else [int(i) for i in img_ids]
        self.member_reports: dict = {}
        super().__init__(*args, **kwargs)

    def _member_file(self, spec: Union[str, dict]) -> str:
        if isinstance(spec, dict):
            path = spec['file']
        elif spec.endswith('.json'):
            path = spec
        else:
            path = osp.join(self.pred_prefix, f'{spec}.json')
        if self.data_root and not osp.isabs(path):
            path = osp.join(self.data_root, path)
        return osp.normpath(path)

    def _member_seconds(self) -> List[float]:
        if self.members_meta is None:
            return [1.0] * len(self.member_names)
        path = self.members_meta
        if self.data_root and not osp.isabs(path):
            path = osp.join(self.data_root, path)
        with open(path, encoding='utf-8') as f:
            meta = {m['name']: m for m in json.load(f)}
        missing = [n for n in self.member_names if n not in meta]
        if missing:
            raise ValueError(f'members_meta {path} has no entry for member(s) {missing}')
        return [float(meta[n]['seconds_per_image']) for n in self.member_names]

    def load_data_list(self) -> List[dict]:
        """Load the annotations, then every member's predictions, packed per image."""
        data_list = super().load_data_list()
        sizes = {d['img_id']: (d['width'], d['height']) for d in data_list}
        per_image: dict = {d['img_id']: [] for d in data_list}
        for m, spec in enumerate(self.member_specs):
            preds = load_member_predictions(self._member_file(spec), sizes, self.cat_ids,
                                            name=self.member_names[m], repair=self.repair)
            if preds.report:
                print_log(f"member '{preds.name}': repaired {preds.report}",
                          logger='current')
            self.member_reports[preds.name] = preds.report
            masks = read_member_masks(self._member_file(spec), preds.name, sizes,
                                      preds.image_ids) if self.with_masks else None
            labels = index_in(preds.category_ids, self.cat_ids)  # cat2label order
            order = np.argsort(preds.image_ids, kind='stable')
            ids, starts = np.unique(preds.image_ids[order], return_index=True)
            bounds = np.append(starts, len(order))
            for img_id, s, e in zip(ids.tolist(), bounds[:-1], bounds[1:]):
                sel = order[s:e]
                per_image[img_id].append((preds.bboxes[sel], preds.scores[sel], labels[sel],
                                          np.full(len(sel), m, dtype=np.int64),
                                          None if masks is None else
                                          masks.select(torch.from_numpy(sel))))
        for d in data_list:
            parts = per_image[d['img_id']]
            if self.with_masks:
                runs = MaskRuns.cat([p[4] for p in parts] or [MaskRuns.empty()])
                d['member_masks'] = tuple(t.numpy() for t in runs)
            parts = [p[:4] for p in parts]
            if parts:
                b, s, l, mem = (np.concatenate(x) for x in zip(*parts))
            else:
                b, s = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
                l, mem = np.zeros(0, np.int64), np.zeros(0, np.int64)
            d['member_preds'] = dict(bboxes=b, scores=s, labels=l, members=mem)
        candidates = list(sizes)
        if self.keep_img_ids is not None:
            unknown = sorted(set(self.keep_img_ids) - set(candidates))
            if unknown:
                raise ValueError(f'CocoEnsembleDataset: img_ids {unknown[:5]} are not images '
                                 f'of {self.ann_file}')
            candidates = self.keep_img_ids
            keep = set(candidates)
            data_list = [d for d in data_list if d['img_id'] in keep]
        if self.fold is not None:
            keep = set(fold_image_ids(candidates, **self.fold))
            data_list = [d for d in data_list if d['img_id'] in keep]
        self._metainfo.update(members=tuple(self.member_names),
                              member_seconds=tuple(self._member_seconds()))
        return data_list
