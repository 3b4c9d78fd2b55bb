import json
import os.path as osp

import pytest
from mmengine.config import Config

import mmens  # noqa: F401
from mmdet.registry import DATASETS
from mmens.datasets import fold_image_ids

from conftest import DATA, ROOT

CFG = osp.join(ROOT, 'configs', '_base_', 'datasets', 'coco_real_cached.py')


def build(**over):
    cfg = Config.fromfile(CFG)
    ds = dict(cfg.test_dataloader.dataset)
    ds.update(over)
    return DATASETS.build(ds)


def test_val_dataset_packs_all_member_predictions():
    ds = build()
    assert len(ds) == 80
    assert ds.metainfo['members'][0] == 'centernet-512'
    assert len(ds.metainfo['member_seconds']) == 6
    total = sum(len(json.load(open(osp.join(DATA, 'predictions', 'val', f'{m}.json'))))
                for m in ds.metainfo['members'])
    assert sum(len(ds.get_data_info(i)['member_preds']['scores']) for i in range(80)) == total
    sample = ds[0]
    members = sample['inputs']['members']
    assert members['bboxes'].shape[1] == 4 and members['labels'].max() < 80
    assert set(members['members'].unique().tolist()) <= set(range(6))
    assert sample['data_samples'].img_shape == sample['data_samples'].ori_shape


def test_folds_partition_the_images():
    ids = list(range(100, 180))
    vals = [fold_image_ids(ids, 5, k, 'val') for k in range(5)]
    assert sorted(sum(vals, [])) == ids
    for k in range(5):
        assert set(fold_image_ids(ids, 5, k, 'train')).isdisjoint(vals[k])
    ds = build(fold=dict(num_folds=5, index=1, split='val'))
    assert len(ds) == 16


def test_img_ids_restrict_the_images_before_the_folds():
    def img_ids(ds):
        return sorted(ds.get_data_info(i)['img_id'] for i in range(len(ds)))

    ids = img_ids(build())[:20]
    ds = build(img_ids=ids, fold=dict(num_folds=4, index=2, split='train'))
    assert img_ids(ds) == fold_image_ids(ids, 4, 2, 'train') and len(ds) == 15
    with pytest.raises(ValueError, match='img_ids .* are not images'):
        build(img_ids=[123456789])


def test_unknown_member_file_names_the_member(tmp_path):
    with pytest.raises(ValueError, match="member 'nope'.*does not exist"):
        build(members=['centernet-512', 'nope'])
    with pytest.raises(ValueError, match='unique'):
        build(members=['centernet-512', 'centernet-512'])
