"""tools/analysis_tools/tta_out_of_fold.py: the merges of its TTA table, on embedded files."""
import os.path as osp

import numpy as np
import pytest

from conftest import DATA, load_tool


@pytest.fixture(scope='module')
def views():
    from mmens.apis.member_files import load_coco, load_member_batch
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    names = ['nanodet-416', 'nanodet-416-hflip']
    files = [osp.join(DATA, 'predictions', 'val', n + '.json') for n in names]
    return coco, load_member_batch(coco, files, names)


def rows(results):
    return np.array(sorted((r['image_id'], r['category_id'], round(r['score'], 5),
                            *np.round(r['bbox'], 2)) for r in results))


def test_tta_model_on_the_files_is_fuse_results_wbf(views):
    """EnsembleTTAModel over the two views of each image (what the table's WBF row runs)
    gives what WBF of the two files gives (fuse_results.py's path), image for image."""
    from mmens.apis import build_fixed_ensemble
    from mmens.apis.inference import fuse_batch
    from mmens.models.tta import EnsembleTTAModel
    tool = load_tool('tta_out_of_fold')
    coco, batch = views
    got = tool.merged_results(EnsembleTTAModel(tool.Views()), batch, range(len(batch.img_ids)))
    want = fuse_batch(build_fixed_ensemble(batch.names, 'wbf'), batch)[0]
    assert len(got) == len(want) > 1000
    np.testing.assert_allclose(rows(got), rows(want), atol=0.02)


def test_mmdet_row_is_det_tta_model_nms(views):
    """The mmdet row runs DetTTAModel itself: class-aware NMS at 0.5 of both views, which
    mmens' NMS reproduces; at most 100 per image."""
    from mmdet.models.test_time_augs import DetTTAModel
    from mmengine.config import ConfigDict

    from mmens.models.tta import EnsembleTTAModel
    tool = load_tool('tta_out_of_fold')
    _, batch = views
    first = range(10)
    mmdet = DetTTAModel(module=tool.Views(), tta_cfg=ConfigDict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    got = tool.merged_results(mmdet, batch, first)
    ours = tool.merged_results(EnsembleTTAModel(tool.Views(), fusion=dict(
        method='nms', iou_thr=0.5)), batch, first)
    np.testing.assert_allclose(rows(got), rows(ours), atol=0.02)
    per_image = np.bincount([r['image_id'] for r in got])
    assert per_image.max() <= 100 and len(got) > 300
