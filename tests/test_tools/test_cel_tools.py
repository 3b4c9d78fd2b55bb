"""e2e-CEL through the tools: train.py (default config), test.py, fuse_results.py, cel_budget."""
import glob
import json
import os
import os.path as osp
import sys

import numpy as np
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
        run([sys.executable, 'tools/analysis_tools/fuse_results.py', '--ann', ann, '--preds', *preds,
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
    out = run([sys.executable, 'tools/analysis_tools/cel_budget.py', '--work-dir', work, '--ks', '2',
               '--budgets', '0.2', '--folds', '2', '--max-images', '24',
               '--gate-folds', '2', '--loss-check', '--cfg-options', *FAST])
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
    by = {(r['setting'], r['method']): r for r in rows}
    for setting in ('k=2', '0.2 s'):
        g = by[(setting, 'e2e-CEL, gated')]
        assert len(g['gate']) == 2 and g['kept'] == sum(x['keep'] for x in g['gate'])
        for x in g['gate']:
            assert x['keep'] == (x['cel_ap'] > x['fixed_ap'])
        assert by[(setting, 'best fixed subset')]['differs'] == 0.0
        assert 0.0 <= by[(setting, 'e2e-CEL')]['differs'] <= 1.0
        for method in ('e2e-CEL', 'best fixed subset'):  # AP on their own training folds
            assert 0.0 < by[(setting, method)]['train_AP'] <= 1.0
        assert 'train_AP' not in by[(setting, 'random subset')]
        if g['kept'] == 0:  # every fold fell back to the best fixed subset
            assert g['AP'] == by[(setting, 'best fixed subset')]['AP']
            assert g['differs'] == 0.0
    assert f"| k=2 | e2e-CEL, gated (e2e-CEL kept on {by[('k=2', 'e2e-CEL, gated')]['kept']}/2" \
        in out
    for setting in ('k=2', '0.2 s'):  # kept where the loss prefers the best fixed subset
        c = by[(setting, 'e2e-CEL, loss-checked')]
        assert len(c['gate']) == 2 and c['kept'] == sum(x['keep'] for x in c['gate'])
        for x in c['gate']:
            assert x['keep'] == (x['prefers'] == x['best'])
            assert len(x['prefers']) == 2 if setting == 'k=2' else len(x['prefers']) >= 1
        if c['kept'] in (0, 2):  # all folds fell back, or none did
            other = 'best fixed subset' if c['kept'] == 0 else 'e2e-CEL'
            assert c['AP'] == by[(setting, other)]['AP']


def test_gated_takes_each_fold_from_its_choice():
    from mmens.experiments.cel_budget import gated
    img_ids = [10, 11, 12, 13]
    folds = [(np.array([2, 3]), np.array([0, 1])), (np.array([0, 1]), np.array([2, 3]))]
    cel = [dict(image_id=i, score=1.0) for i in img_ids]
    fixed = [dict(image_id=i, score=0.5) for i in img_ids]
    cel_sel, fixed_sel = np.eye(4)[:, :3], np.ones((4, 3))
    res, sel = gated(cel, cel_sel, fixed, fixed_sel, folds,
                     [dict(keep=True), dict(keep=False)], img_ids)
    assert sorted((r['image_id'], r['score']) for r in res) == [
        (10, 1.0), (11, 1.0), (12, 0.5), (13, 0.5)]
    assert np.array_equal(sel, np.vstack([cel_sel[:2], fixed_sel[2:]]))


def test_warm_start_selects_the_best_fixed_subset_under_every_budget():
    import itertools

    import torch

    from mmens.experiments.cel_budget import feasible, warm_start
    from mmens.ops.knapsack import PerturbedSelector
    seconds = np.array([m['seconds_per_image']
                        for m in json.load(open(osp.join(DATA, 'members.json')))])
    n = len(seconds)
    for setting in [dict(k=k) for k in range(1, n)] + [dict(budget=0.2), dict(budget=0.4)]:
        selector = PerturbedSelector(**(setting if 'k' in setting else dict(
            setting, costs=torch.as_tensor(seconds))))
        for subset in itertools.combinations(range(n), 2 if 'k' not in setting
                                             else setting['k']):
            if not feasible(subset, setting, seconds):
                continue
            x = selector.exact(torch.tensor([warm_start(subset, n)]))[0]
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


def test_cel_budget_bad_fold_counts_are_one_line_errors(tmp_path):
    import re
    import subprocess

    import pytest
    from conftest import load_tool
    args = ['--ks', '1', '--budgets', '--folds', '2', '--max-images', '24']
    # through the CLI: exit 2, one line, no traceback
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/cel_budget.py', *args, '--gate-folds', '30'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and 'gate_folds must be 0 (off) or 2..12' in proc.stderr, \
        proc.stderr
    assert 'Traceback' not in proc.stderr
    # the other messages in process (run_cli turns any ValueError into that one line)
    tool = load_tool('cel_budget')
    for extra, msg in [(['--gate-folds', '1'], '--gate-folds must be 0 (off) or >= 2'),
                       (['--folds', '100'], '100 folds need at least 100 images, got 24'),
                       (['--bags', '0'], 'bags must be >= 1'),
                       (['--bags', '2', '--loss-check'], 'and 1 with the loss check')]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            tool.main([*args, *extra, '--work-dir', str(tmp_path)])


def test_cel_tools_name_a_missing_or_non_cel_config(tmp_path):
    import re

    import pytest
    from conftest import load_tool
    wbf = osp.join(ROOT, 'configs', 'wbf', 'wbf_6members_coco-real-val.py')
    for tool, extra in [('cel_budget', ['--work-dir', str(tmp_path)]), ('cel_loss_vs_ap', [])]:
        main = load_tool(tool).main
        with pytest.raises(ValueError, match='config nope.py does not exist'):
            main(['--config', 'nope.py', *extra])
        with pytest.raises(ValueError, match=re.escape(
                "is not an e2e-CEL training config (model type 'FusionDetector'")):
            main(['--config', wbf, *extra])


def test_bagged_select_is_the_exact_selection_of_the_mean_scores():
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    from mmens.experiments.cel_out_of_fold import bagged_select
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'cel', 'cel_k3_6members_coco-real-val.py'))
    with open(osp.join(DATA, 'annotations', 'val.json'), encoding='utf-8') as f:
        cfg.train_dataloader.dataset.img_ids = sorted(i['id'] for i in json.load(f)['images'])[:4]
    models = []
    for init in ([3, 0, 0, 0, 0, 0], [0, 1, 0.5, 0, 0, 0], [0, 1, 0, 0.2, 0, 0]):
        cfg.model.selection_net.init_scores = init
        models.append(MODELS.build(cfg.model).eval())
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    packed = models[0].data_preprocessor(pseudo_collate([dataset[i] for i in range(4)]),
                                         False)['inputs']
    with torch.no_grad():
        assert torch.equal(bagged_select(models[:1], packed), models[0].select(packed)[0])
        # the nets start at ĉ = init: the mean is 1, 2/3, 1/6, 1/15, 0, 0 (top-3: 0, 1, 2;
        # the median, 0, 1, 0, 0, 0, 0, or a single net would pick others)
        x = bagged_select(models, packed)
    assert x.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 4
