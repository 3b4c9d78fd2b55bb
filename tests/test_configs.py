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
                  'LearnedFusionHead', 'LearnedWeightsHead']),
        (DATASETS, ['CocoEnsembleDataset']),
        (TRANSFORMS, ['LoadMemberPredictions', 'PackEnsembleInputs']),
        (METRICS, ['SubsetCocoMetric']),
        (MODEL_WRAPPERS, ['EnsembleDistributedWrapper']),
        (LOOPS, ['FullBatchTrainLoop']),
    ]:
        for name in names:
            assert registry.get(name) is not None, name


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, ROOT))
def test_config_loads_and_model_builds(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    assert 'mmens' in cfg.custom_imports['imports']
    assert cfg.default_scope == 'mmdet'
    model = MODELS.build(cfg.model)
    assert model is not None
