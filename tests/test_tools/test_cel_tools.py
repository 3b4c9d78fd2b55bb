"""e2e-CEL through the tools: train.py (default config), test.py, fuse_results.py, cel_budget."""
import glob
import json
import os
import os.path as osp
import sys

import numpy as np
from conftest import DATA, ROOT, load_tool
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
    for extra, limit in [(['--budget-seconds', '0.2'], 0.2), (['--k', '2'], None)]:
        metrics = tmp_path / 'm.json'  # in process: the CLI's start-up is tested elsewhere
        load_tool('fuse_results').main(['--ann', ann, '--preds', *preds, '--method', 'cel',
                                        '--checkpoint', ckpt, '--metrics-out', str(metrics),
                                        *extra])
        m = json.loads(metrics.read_text())['fusion']
        assert m['AP'] > 0.15
        freq = m['selection_frequency']
        assert abs(sum(freq[n] * seconds[n] for n in freq)
                   - m['member_seconds_per_image']) < 1e-4
        if limit is not None:
            assert m['member_seconds_per_image'] <= limit + 1e-6
        else:
            assert m['members_per_image'] == 2.0


def test_cel_budget_report_smoke_and_train_py_reproduces_its_fold_model(tmp_path):
    """The report's e2e-CEL of a fold is what tools/train.py trains on that fold: the
    warm start is computed inside training and equals the report's best fixed subset."""
    import torch
    work = str(tmp_path / 'budget')
    out = run([sys.executable, 'tools/analysis_tools/cel_budget.py', '--work-dir', work,
               '--ks', '2', '--budgets', '0.2', '--folds', '2', '--max-images', '24',
               '--cfg-options', *FAST])
    report = json.load(open(osp.join(work, 'budget.json')))
    rows = report['rows']
    by = {(r['setting'], r['method']): r for r in rows}
    assert set(by) == {(s, m) for s in ('k=2', '0.2 s') for m in (
        'e2e-CEL', 'best fixed subset', 'random subset')} | {('all', 'all-member fusion')}
    seconds = np.array([m['seconds_per_image']
                        for m in json.load(open(osp.join(DATA, 'members.json')))])
    for setting in ('k=2', '0.2 s'):
        assert by[(setting, 'best fixed subset')]['differs'] == 0.0
        for method in ('e2e-CEL', 'best fixed subset'):  # AP on their own training folds
            assert 0.0 < by[(setting, method)]['train_AP'] <= 1.0
        assert 'train_AP' not in by[(setting, 'random subset')]
        # each fold's warm start (computed in training) is that fold's best fixed subset
        warm = report['warm_starts'][setting]
        assert warm == report['best_fixed'][setting] and len(warm) == 2
        for subset in warm:
            assert (len(subset) == 2 if setting == 'k=2'
                    else seconds[subset].sum() <= 0.2 + 1e-9)
    assert by[('0.2 s', 'e2e-CEL')]['seconds'] <= 0.2 + 1e-6
    assert by[('k=2', 'e2e-CEL')]['members'] == 2.0
    for png in ['ap_vs_budget.png', 'selection_frequency.png']:
        assert osp.getsize(osp.join(work, png)) > 10000
    assert '| k=2 | e2e-CEL |' in out
    # fold 0 of the 0.2 s row (its training images), trained by tools/train.py with the
    # same settings
    from mmens.datasets.ensemble_dataset import fold_image_ids
    with open(osp.join(DATA, 'annotations', 'val.json'), encoding='utf-8') as f:
        ids = sorted(i['id'] for i in json.load(f)['images'])[:24]
    ids = fold_image_ids(ids, 2, 0, 'train', 0)
    train = str(tmp_path / 'train')
    run([sys.executable, 'tools/train.py', CEL_DEFAULT, '--work-dir', train, '--cfg-options',
         *FAST, 'model.selector.budget=0.2', f"train_dataloader.dataset.img_ids={ids}"])
    from mmens.utils.setup_env import safe_torch_load  # weights only, mmens' allow-list
    mine = safe_torch_load(osp.join(train, 'epoch_1.pth'))['state_dict']
    theirs = safe_torch_load(osp.join(work, '0.2s', 'fold0', 'epoch_1.pth'))['state_dict']
    assert mine.keys() == theirs.keys() and 'selection_net.init_scores' in mine
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def test_warm_start_selects_the_best_fixed_subset_under_every_budget():
    import torch

    from mmens.models.detectors.cel_warm_start import (feasible_fixed_subsets,
                                                       warm_start_scores)
    from mmens.ops.knapsack import PerturbedSelector
    seconds = np.array([m['seconds_per_image']
                        for m in json.load(open(osp.join(DATA, 'members.json')))])
    n = len(seconds)
    for setting in [dict(k=k) for k in range(1, n)] + [dict(budget=0.2), dict(budget=0.4)]:
        selector = PerturbedSelector(**(setting if 'k' in setting else dict(
            setting, costs=torch.as_tensor(seconds))))
        feasible = feasible_fixed_subsets(n, k=setting.get('k'), costs=seconds,
                                          budget=setting.get('budget'))
        assert feasible
        for subset in feasible:
            x = selector.exact(torch.tensor([warm_start_scores(subset, n)]))[0]
            # e.g. 0.2 s: a CenterNet and a YOLO fit with room for the other YOLO, which
            # all-positive scores would have added
            assert x.nonzero().flatten().tolist() == list(subset), (setting, subset)


def test_fuse_results_budget_options_need_cel():
    import subprocess
    preds = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/fuse_results.py', '--ann',
                           osp.join(DATA, 'annotations', 'val.json'), '--preds', *preds,
                           '--method', 'wbf', '--k', '2'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and '--k / --budget-seconds are for --method cel' in proc.stderr


def test_cel_budget_bad_fold_count_is_a_one_line_error():
    import subprocess
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/cel_budget.py', '--ks', '1',
                           '--budgets', '--folds', '100', '--max-images', '24'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith('100 folds need at least 100 images, got 24')
    assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cel_tools_name_a_missing_or_non_cel_config(tmp_path):
    import re

    import pytest
    from conftest import load_tool
    wbf = osp.join(ROOT, 'configs', 'wbf', 'wbf_6members_coco-real-val.py')
    for tool, extra in [('cel_budget', ['--work-dir', str(tmp_path)])]:
        main = load_tool(tool).main
        with pytest.raises(ValueError, match='config nope.py does not exist'):
            main(['--config', 'nope.py', *extra])
        with pytest.raises(ValueError, match=re.escape(
                "is not an e2e-CEL training config (model type 'FusionDetector'")):
            main(['--config', wbf, *extra])
