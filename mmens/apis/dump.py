"""Run mmdet member detectors over a COCO image set and write COCO-results JSON."""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import mmcv
import numpy as np
import torch
from mmengine.utils import ProgressBar
from pycocotools.coco import COCO

from mmens.models.live_members import LiveMembers
from .member_files import results_to_coco


def label_to_category(live: LiveMembers, index: int, coco: COCO) -> np.ndarray:
    """COCO category id of each label of member ``index``.

    A member whose checkpoint names its classes (``dataset_meta['classes']``) is mapped by
    name to the annotation file's categories; otherwise label ``l`` is the ``l``-th category
    by sorted id (mmdet's ``CocoDataset`` convention).
    """
    spec = live.specs[index]
    model = live.models[spec['key']][0]
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c['id'])
    classes = getattr(model, 'dataset_meta', None) or {}
    classes = classes.get('classes')
    if classes is None:
        return np.array([c['id'] for c in cats], dtype=np.int64)
    by_name = {c['name']: c['id'] for c in cats}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"member {spec['name']}: classes {missing[:5]} of its checkpoint are "
                         'not categories of the annotation file')
    return np.array([by_name[c] for c in classes], dtype=np.int64)


def load_image(path: str) -> np.ndarray:
    """Decode an image exactly as mmdet's ``LoadImageFromFile`` does (BGR ``uint8``)."""
    if not osp.isfile(path):
        raise ValueError(f'image file {path} does not exist')
    with open(path, 'rb') as f:
        return mmcv.imfrombytes(f.read(), flag='color', channel_order='bgr')


def dump_members(live: LiveMembers, coco: COCO, img_dir: str, batch_size: int = 1,
                 img_ids: Optional[Sequence[int]] = None,
                 device: str = 'cpu') -> Dict[str, List[dict]]:
    """Predictions of every live member on the images of ``coco``, as COCO results.

    Args:
        live (LiveMembers): the members (flipped variants included).
        coco (COCO): annotation file; its images are read from ``img_dir/file_name``.
        batch_size (int): images per member forward (1 gives the same boxes as a live
            ensemble run with batch size 1).
        img_ids (Sequence[int], optional): a subset of the images (default: all, sorted).
        device (str): where the members run.

    Returns:
        dict: member name → list of ``{image_id, category_id, bbox [x, y, w, h], score}``
        (pixels, every box the member kept under its ``score_thr`` / ``max_per_img``).
    """
    img_ids = sorted(coco.getImgIds()) if img_ids is None else list(img_ids)
    if not img_ids:
        raise ValueError('dump_members: the annotation file has no images')
    live.to(device)
    cat_maps = [label_to_category(live, m, coco) for m in range(len(live))]
    results: Dict[str, List[dict]] = {name: [] for name in live.names}
    bar = ProgressBar(len(img_ids) * len(live))
    for start in range(0, len(img_ids), batch_size):
        ids = img_ids[start:start + batch_size]
        infos = coco.loadImgs(ids)
        images = [load_image(osp.join(img_dir, info['file_name'])) for info in infos]
        for m, name in enumerate(live.names):
            for b, (img_id, out) in enumerate(zip(ids, live.predict_member(m, images))):
                labels = out['labels']
                if len(labels) and int(labels.max()) >= len(cat_maps[m]):
                    raise ValueError(f'member {name}, image {img_id}: label '
                                     f'{int(labels.max())} has no category '
                                     f'({len(cat_maps[m])} categories)')
                results[name] += results_to_coco(
                    out['bboxes'], out['scores'], labels,
                    torch.full_like(labels, b), ids, cat_maps[m], rounded=False)
            for _ in ids:
                bar.update()
    for name, entries in results.items():
        if not entries:
            raise ValueError(f'member {name}: predicted no box on {len(img_ids)} images '
                             '(lower its score_thr?)')
    return results


def flip_member(spec: dict) -> dict:
    """The horizontally flipped variant of a member entry (name ``<name>-hflip``)."""
    return dict(spec, name=spec['name'] + '-hflip', flip=True)


__all__ = ['dump_members', 'flip_member', 'label_to_category', 'load_image']
