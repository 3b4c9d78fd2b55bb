"""Every config loads with Config.fromfile and its model builds; importing mmens registers."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import ROOT

CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


def test_import_registers_modules():
    import mmens  # noqa: F401
    from mmdet.registry import DATASETS, METRICS, MODELS, TRANSFORMS
    from mmengine.registry import LOOPS, MODEL_WRAPPERS
    for registry, names in [
        (MODELS, ['FusionDetector', 'EnsembleDetector', 'EnsembleDataPreprocessor',
                  'LearnedFusionHead', 'LearnedWeightsHead', 'CELDetector',
                  'MemberSelectionNet']),
        (DATASETS, ['CocoEnsembleDataset']),
        (TRANSFORMS, ['LoadMemberPredictions', 'PackEnsembleInputs']),
        (METRICS, ['SubsetCocoMetric']),
        (MODEL_WRAPPERS, ['EnsembleDistributedWrapper']),
        (LOOPS, ['FullBatchTrainLoop']),
    ]:
        for name in names:
            assert registry.get(name) is not None, name


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
def test_config_loads_and_model_builds(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    assert 'mmens' in cfg.custom_imports['imports']
    assert cfg.default_scope == 'mmdet'
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
    model = MODELS.build(model_cfg)
    assert len(model.members) == len(cfg.model.members)
