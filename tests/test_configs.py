"""Every config loads with Config.fromfile, uses ``default_scope='mmens'`` (the one
mechanism, configs/_base_/default_runtime.py), and its model and datasets build from it."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import ROOT

# configs/tta/ are mmdet detectors with a tta_model (tests/test_models/test_ensemble_tta.py)
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p and osp.join('configs', 'tta') not in p)


def test_each_config_folder_starts_with_its_recommended_config():
    """The first config of learned/ and cel/ is the recommended one: the code defaults
    (docs and tools take the first; test_default_* train them)."""
    first = {d: sorted(glob.glob(osp.join(ROOT, 'configs', d, '*.py')))[0]
             for d in ('learned', 'cel')}
    assert {d: osp.basename(p) for d, p in first.items()} == {
        'learned': 'learned-weights_6members_coco-real-val.py',
        'cel': 'cel_budget-0.4s_6members_coco-real-val.py'}
    assert Config.fromfile(first['learned']).model.head.type == 'LearnedWeightsHead'
    cel = Config.fromfile(first['cel']).model
    assert cel.type == 'CELDetector' and dict(cel.selector) == dict(budget=0.4)
    assert 'train_cfg' not in cel  # trained with CEL_TRAIN_DEFAULTS


def test_member_seconds_of_the_base_config_are_members_json():
    import json
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets',
                                   'coco_real_cached.py'))
    meta = json.load(open(osp.join(ROOT, 'data', 'coco_real', 'members.json')))
    assert cfg.members == [m['name'] for m in meta]
    assert cfg.member_seconds == [m['seconds_per_image'] for m in meta]


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, ROOT))
def test_config_loads_and_model_and_datasets_build(path):
    """Built as the Runner builds them: from mmengine's root registries under the config's
    default scope, which imports mmens' modules (registry ``locations``)."""
    from mmengine.registry import DATASETS, MODELS, DefaultScope
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmens' and 'custom_imports' not in cfg
    assert cfg.runner_type == 'EnsembleRunner'
    model_cfg = cfg.model
    if isinstance(model_cfg.members[0], dict):
        # live members from the model zoo (downloaded on use): check their configs resolve,
        # build the ensemble around the tiny test members instead
        from mmengine.hub import get_config
        for m in model_cfg.members:
            assert get_config(m['config']).model.type
            assert m['checkpoint'].startswith('https://download.openmmlab.com/')
        tiny = osp.join(ROOT, 'tests', 'data', 'members', 'tiny_retinanet.py')
        model_cfg.members = [dict(name=m['name'], config=tiny, checkpoint=None,
                                  flip=m.get('flip', False)) for m in model_cfg.members]
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(model_cfg)
        assert type(model).__module__.startswith('mmens.models')
        assert len(model.members) == len(cfg.model.members)
        for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if cfg.get(split) is None:
                continue
            dataset = DATASETS.build(dict(cfg[split].dataset, indices=2))
            assert len(dataset) == 2
            assert dataset[0]['data_samples'] is not None
