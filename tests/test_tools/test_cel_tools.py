"""e2e-CEL through the tools: train.py (default config), test.py, fuse_results.py, cel_budget."""
import glob
import json
import os
import os.path as osp
import sys

from conftest import DATA, ROOT
from test_train_test import TINY, metric, run

CEL_DEFAULT = sorted(glob.glob(osp.join(ROOT, 'configs', 'cel', '*.py')))[0]
FAST = ['train_cfg.steps=20', 'model.selector.num_samples=100']


def test_default_cel_config_trains_tests_and_drives_fuse_results(tmp_path):
    work = str(tmp_path / 'cel')
    out = run([sys.executable, 'tools/train.py', CEL_DEFAULT, '--work-dir', work,
               '--cfg-options', *TINY, *FAST])
    ckpt = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(ckpt), os.listdir(work)
    assert 'members_selected' in out and 'member_seconds' in out
    out = run([sys.executable, 'tools/test.py', CEL_DEFAULT, ckpt, '--work-dir',
               str(tmp_path / 'test'), '--cfg-options', *TINY])
    assert 0.0 < metric(out) <= 1.0
    preds = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))
    ann = osp.join(DATA, 'annotations', 'val.json')
    seconds = {m['name']: m['seconds_per_image']
               for m in json.load(open(osp.join(DATA, 'members.json')))}
    for extra, limit in [([], 0.4), (['--budget-seconds', '0.2'], 0.2),
                         (['--k', '2'], None)]:
        metrics = tmp_path / 'm.json'
        run([sys.executable, 'tools/fuse_results.py', '--ann', ann, '--preds', *preds,
             '--method', 'cel', '--checkpoint', ckpt, '--metrics-out', str(metrics), *extra])
        m = json.loads(metrics.read_text())['fusion']
        assert m['AP'] > 0.15
        freq = m['selection_frequency']
        assert abs(sum(freq[n] * seconds[n] for n in freq)
                   - m['member_seconds_per_image']) < 1e-4
        if limit is not None:
            assert m['member_seconds_per_image'] <= limit + 1e-6
        else:
            assert m['members_per_image'] == 2.0


def test_cel_budget_report_smoke(tmp_path):
    work = str(tmp_path / 'budget')
    out = run([sys.executable, 'tools/cel_budget.py', '--work-dir', work, '--ks', '2',
               '--budgets', '0.2', '--folds', '2', '--max-images', '24',
               '--cfg-options', *FAST])
    rows = json.load(open(osp.join(work, 'budget.json')))['rows']
    methods = {(r['setting'], r['method']) for r in rows}
    assert ('k=2', 'e2e-CEL') in methods and ('0.2 s', 'best fixed subset') in methods
    assert ('all', 'all-member fusion') in methods and ('k=2', 'random subset') in methods
    for r in rows:
        assert 0.0 <= r['AP'] <= 1.0
        if r['setting'] == '0.2 s':
            assert r['seconds'] <= 0.2 + 1e-6
        if r['setting'] == 'k=2':
            assert r['members'] == 2.0
    for png in ['ap_vs_budget.png', 'selection_frequency.png']:
        assert osp.getsize(osp.join(work, png)) > 10000
    assert '| k=2 | e2e-CEL |' in out


def test_fuse_results_budget_options_need_cel():
    import subprocess
    preds = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))
    proc = subprocess.run([sys.executable, 'tools/fuse_results.py', '--ann',
                           osp.join(DATA, 'annotations', 'val.json'), '--preds', *preds,
                           '--method', 'wbf', '--k', '2'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and '--k / --budget-seconds are for --method cel' in proc.stderr
