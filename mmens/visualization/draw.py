"""Real images with member and fused boxes, drawn by mmdet's ``DetLocalVisualizer``."""
import os.path as osp
from typing import Dict, List, Sequence

import mmcv
import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmengine.structures import InstanceData

from mmens.ops.boxes import xywh_to_xyxy


def _sample(results: List[dict], img_id: int, cat_index: Dict[int, int],
            score_thr: float) -> DetDataSample:
    rows = [r for r in results if r['image_id'] == img_id and r['score'] >= score_thr]
    xywh = torch.tensor([r['bbox'] for r in rows], dtype=torch.float32).reshape(-1, 4)
    inst = InstanceData()
    inst.bboxes = xywh_to_xyxy(xywh)
    inst.scores = torch.tensor([r['score'] for r in rows], dtype=torch.float32)
    inst.labels = torch.tensor([cat_index[r['category_id']] for r in rows], dtype=torch.long)
    sample = DetDataSample()
    sample.pred_instances = inst
    return sample


def draw_examples(coco, img_dir: str, results: Dict[str, List[dict]], img_ids: Sequence[int],
                  out_dir: str, classes: Sequence[str], score_thr: float = 0.3) -> List[str]:
    """One PNG per image: a panel per method (``results[name]``) side by side.

    Boxes scoring at least ``score_thr`` are drawn; the panel title is the method name.
    """
    vis = DetLocalVisualizer(name=f'mmens_examples_{id(results)}')
    vis.dataset_meta = dict(classes=tuple(classes))
    cat_index = {c: i for i, c in enumerate(sorted(coco.getCatIds()))}
    paths = []
    for img_id in img_ids:
        info = coco.loadImgs([img_id])[0]
        img = mmcv.imread(osp.join(img_dir, info['file_name']), channel_order='rgb')
        panels = []
        for name, res in results.items():
            vis.add_datasample(name, img, _sample(res, img_id, cat_index, score_thr),
                               draw_gt=False, pred_score_thr=score_thr, show=False)
            panel = vis.get_image()
            bar = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
            panel = np.concatenate([bar, panel], 0)
            vis.set_image(panel)
            vis.draw_texts(name, np.array([6, 4]), colors='black', font_sizes=14)
            panels.append(vis.get_image())
        path = osp.join(out_dir, f'example_{img_id}.png')
        mmcv.imwrite(np.concatenate(panels, 1)[..., ::-1], path)
        paths.append(path)
    return paths
