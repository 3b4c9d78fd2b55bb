"""tools/train.py, tools/test.py and tools/dist_test.sh end to end on tiny configs (CPU)."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from conftest import ROOT

LEARNED = osp.join(ROOT, 'configs', 'learned', 'learned_theta-global_6members_coco-real-val.py')
DEFAULT = sorted(glob.glob(osp.join(ROOT, 'configs', 'learned', '*.py')))[0]
WBF = osp.join(ROOT, 'configs', 'wbf', 'wbf_6members_coco-real-val.py')
TINY_TEST = ['val_dataloader.dataset.indices=8', 'test_dataloader.dataset.indices=8',
             'default_hooks.logger.interval=1']
TINY = TINY_TEST + ['train_dataloader.dataset.indices=16',
                    'default_hooks.checkpoint.interval=1']


def run(args, env_extra=None, timeout=600, drop=()):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **(env_extra or {}))
    for key in drop:
        env.pop(key, None)
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def metric(out, key='coco/bbox_mAP'):
    found = re.findall(re.escape(key) + r':\s*([0-9.]+)', out)
    assert found, out[-3000:]
    return float(found[-1])


def test_train_checkpoint_resume_and_test(tmp_path):
    work = str(tmp_path / 'work')
    opts = TINY + ['train_cfg.max_epochs=2', 'train_cfg.val_interval=2', 'train_cfg.steps=5']
    out = run([sys.executable, 'tools/train.py', LEARNED, '--work-dir', work,
               '--cfg-options', *opts])
    assert osp.isfile(osp.join(work, 'epoch_2.pth')), os.listdir(work)
    assert 0.0 < metric(out) <= 1.0
    # resume: --resume (auto) finds epoch_2.pth through torch.load(weights_only=True)
    opts = TINY + ['train_cfg.max_epochs=3', 'train_cfg.val_interval=3', 'train_cfg.steps=5']
    out = run([sys.executable, 'tools/train.py', LEARNED, '--work-dir', work, '--resume',
               '--cfg-options', *opts])
    assert re.search(r'resumed epoch: 2', out), out[-3000:]
    assert osp.isfile(osp.join(work, 'epoch_3.pth'))
    assert 'Epoch(train)   [1]' not in out  # training went on from epoch 3
    out = run([sys.executable, 'tools/test.py', LEARNED, osp.join(work, 'epoch_3.pth'),
               '--work-dir', str(tmp_path / 'test'), '--out', str(tmp_path / 'p.pkl'),
               '--cfg-options', *TINY])
    assert 0.0 <= metric(out) <= 1.0
    assert osp.isfile(tmp_path / 'p.pkl')


def test_dist_test_matches_single_process(tmp_path):
    single = metric(run([sys.executable, 'tools/test.py', WBF, '--work-dir',
                         str(tmp_path / 'one'), '--cfg-options', *TINY_TEST]))
    # no $PYTHON and no venv activated: the script finds the repository's .venv itself
    out = run(['bash', 'tools/dist_test.sh', WBF, 'none', '2', '--work-dir',
               str(tmp_path / 'two'), '--cfg-options', *TINY_TEST],
              env_extra=dict(PORT='29512'), drop=('PYTHON', 'VIRTUAL_ENV'))
    assert 'Distributed training: True' in out and '[rank1]' not in out, out[-3000:]
    assert metric(out) == pytest.approx(single, abs=1e-4)
    assert single > 0.1


def test_default_learned_config_trains_full_batch_and_fuse_results_uses_it(tmp_path):
    """The first learned config (the recommended default) trains with nothing but
    --work-dir; its checkpoint alone drives tools/analysis_tools/fuse_results.py, files in any order."""
    work = str(tmp_path / 'default')
    out = run([sys.executable, 'tools/train.py', DEFAULT, '--work-dir', work,
               '--cfg-options', *TINY])
    ckpt = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(ckpt), os.listdir(work)
    assert 0.0 <= metric(out) <= 1.0
    preds = sorted(glob.glob(osp.join(ROOT, 'data', 'coco_real', 'predictions', 'val',
                                      '*.json')), reverse=True)
    metrics = tmp_path / 'm.json'
    out = run([sys.executable, 'tools/analysis_tools/fuse_results.py', '--ann',
               osp.join(ROOT, 'data', 'coco_real', 'annotations', 'val.json'), '--preds',
               *preds, '--method', 'learned', '--checkpoint', ckpt, '--metrics-out',
               str(metrics)])
    import json
    m = json.loads(metrics.read_text())
    assert set(m['members']) == {osp.basename(p)[:-5] for p in preds}
    assert m['fusion']['method'] == 'learned' and m['fusion']['AP'] > 0.2
    # a missing member is a clear error, not a traceback
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/fuse_results.py', '--ann',
                           osp.join(ROOT, 'data', 'coco_real', 'annotations', 'val.json'),
                           '--preds', *preds[:-1], '--method', 'learned', '--checkpoint',
                           ckpt], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and 'missing prediction files' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_dist_train_two_cpu_processes(tmp_path):
    """tools/dist_train.sh: 2 processes, gloo DDP through EnsembleDistributedWrapper."""
    work = str(tmp_path / 'dist')
    out = run(['bash', 'tools/dist_train.sh', LEARNED, '2', '--work-dir', work,
               '--cfg-options', *TINY, 'train_cfg.steps=5'],
              env_extra=dict(PYTHON=sys.executable, PORT='29514'))
    assert 'Distributed training: True' in out
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))
    assert 0.0 <= metric(out) <= 1.0
