"""``import mmens`` and ``import mmens.ops`` import no OpenMMLab package; mmens' modules
live in its own registry nodes, filled by ``register_all_modules`` or lazily by a config's
``default_scope='mmens'``. (That importing mmens patches nothing of mmengine:
tests/test_utils/test_checkpoint_safety.py.)"""
import os
import re
import subprocess
import sys
import textwrap

from conftest import ROOT


def run_python(script: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_import_mmens_and_ops_imports_no_openmmlab_package():
    out = run_python('''
        import sys
        import mmens, mmens.ops, mmens.utils
        print(sorted(m for m in sys.modules
                     if m.partition('.')[0] in ('mmcv', 'mmdet', 'mmengine')))
    ''')
    assert out.strip() == '[]'


def test_register_all_modules_fills_mmens_registries():
    out = run_python('''
        from mmengine.registry import DefaultScope
        from mmens import registry as R
        from mmens.utils import register_all_modules
        register_all_modules()
        assert DefaultScope.get_current_instance().scope_name == 'mmens'
        names = {
            R.MODELS: ['FusionDetector', 'EnsembleDetector', 'EnsembleDataPreprocessor',
                       'LearnedFusionHead', 'LearnedWeightsHead', 'CELDetector',
                       'MemberSelectionNet'],
            R.DATASETS: ['CocoEnsembleDataset'],
            R.TRANSFORMS: ['LoadMemberPredictions', 'PackEnsembleInputs'],
            R.METRICS: ['SubsetCocoMetric'],
            R.MODEL_WRAPPERS: ['EnsembleDistributedWrapper'],
            R.LOOPS: ['FullBatchTrainLoop'],
            R.HOOKS: ['ThetaPlotHook'],
            R.RUNNERS: ['EnsembleRunner'],
        }
        for node, keys in names.items():
            assert node.scope == 'mmens' and node.parent.scope == 'mmdet', node
            for key in keys:
                assert key in node.module_dict, (node.name, key)  # mmens' own node
                assert key not in node.parent.module_dict, key  # not mmdet's
        # mmdet's and mmengine's names resolve through the parents
        assert R.HOOKS.get('DetVisualizationHook') and R.HOOKS.get('CheckpointHook')
        assert R.DATASETS.get('CocoDataset') and R.TRANSFORMS.get('LoadAnnotations')
        print('ok')
    ''')
    assert out.strip() == 'ok'


def test_a_config_builds_its_modules_lazily_and_its_runner_no_torchvision(tmp_path):
    """``default_scope='mmens'`` alone: building from the mmengine root registry (as
    the Runner does) imports mmens' modules on first use. EnsembleRunner's environment
    log is mmengine's, TorchVision line included, without importing torchvision for it
    (1.3-2 s of every tools/train.py and tools/test.py run)."""
    out = run_python(f'''
        import sys
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        cfg = Config.fromfile('{ROOT}/configs/wbf/wbf_6members_coco-real-val.py')
        assert 'mmens.models' not in sys.modules
        init_default_scope(cfg.default_scope)
        model = MODELS.build(cfg.model)
        print('module:', type(model).__module__)
        from mmens.registry import RUNNERS
        cfg.work_dir = '{tmp_path}'
        RUNNERS.build(cfg)
        print('imported:', 'torchvision' in sys.modules)
        import torchvision
        print('version:', torchvision.__version__)
    ''')
    assert 'module: mmens.models.detectors.fusion_detector\n' in out, out[-3000:]
    version = re.search(r'^version: (\S+)$', out, re.M).group(1)
    assert 'imported: False' in out and f'TorchVision: {version}\n' in out, out[-3000:]

