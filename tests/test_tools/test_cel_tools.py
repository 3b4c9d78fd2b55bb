"""e2e-CEL through the tools: train.py (default config), fuse_results.py, cel_budget.

train.py runs in process (its own start-up is tested in test_train_test.py): each fit is
a few seconds of steps on 16 images, not the start-up of another interpreter."""
import glob
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
from conftest import DATA, ROOT, load_tool, run_tool
from test_train_test import TINY, tool

CEL_DEFAULT = sorted(glob.glob(osp.join(ROOT, 'configs', 'cel', '*.py')))[0]
FAST = ['train_cfg.steps=5', 'model.selector.num_samples=20']


def train_in_process(argv):
    """tools/train.py's ``train`` on ``argv``, on one thread as ``run`` gives the tools (the
    sums then add up in the same order): the runner after training."""
    import torch
    train = load_tool('fit_ensemble').load_train_tool()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.train(train.parse_args(argv))
    finally:
        torch.set_num_threads(threads)


def subset_files(folder, num_images):
    """The embedded val annotations and member files on its first ``num_images`` images."""
    os.makedirs(folder)
    gt = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    keep = set(sorted(im['id'] for im in gt['images'])[:num_images])
    ann = str(folder / 'val.json')
    json.dump(dict(gt, images=[im for im in gt['images'] if im['id'] in keep],
                   annotations=[a for a in gt['annotations'] if a['image_id'] in keep]),
              open(ann, 'w'))
    preds = []
    for f in sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json'))):
        preds.append(str(folder / osp.basename(f)))
        json.dump([e for e in json.load(open(f)) if e['image_id'] in keep], open(preds[-1], 'w'))
    return ann, preds


def test_default_cel_config_trains_tests_and_drives_fuse_results(tmp_path):
    work = str(tmp_path / 'cel')
    runner = train_in_process([CEL_DEFAULT, '--work-dir', work, '--cfg-options', *TINY, *FAST])
    ckpt = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(ckpt), os.listdir(work)
    logged = runner.message_hub.log_scalars
    # the logged cost: the probe and the net on every image, within the 0.4 s budget
    assert 0.0036 < logged['train/member_seconds'].current() <= 0.4
    assert logged['train/members_selected'].current() >= 1
    assert 0.0 < runner.test()['coco/bbox_mAP'] <= 1.0  # the test loop of tools/test.py
    # fuse_results on 16 images (COCO AP of each member is most of its time)
    ann, preds = subset_files(tmp_path / 'files', 16)
    seconds = {m['name']: m['seconds_per_image']
               for m in json.load(open(osp.join(DATA, 'members.json')))}
    fuse = load_tool('fuse_results').main  # in process: the CLI's start-up is tested elsewhere
    for extra, limit in [(['--budget-seconds', '0.2'], 0.2), (['--k', '2', '--no-eval'], None)]:
        metrics, sel_out = tmp_path / 'm.json', tmp_path / f'sel_{extra[0][2:]}.json'
        fuse(['--ann', ann, '--preds', *preds, '--method', 'cel', '--checkpoint', ckpt,
              '--metrics-out', str(metrics), '--selection-out', str(sel_out), *extra])
        m = json.loads(metrics.read_text())['fusion']
        assert m.get('AP', 1.0) > 0.15
        sel = json.loads(sel_out.read_text())
        assert sel['probes'] == m['probes'] == ['yolofastestv2-352'] and len(sel['selected']) == 16
        # every image pays for the probe, the members it selects and the selection net
        run = [set(names) | set(sel['probes']) for names in sel['selected'].values()]
        cost = np.mean([sum(seconds[n] for n in r) + m['selection_seconds'] for r in run])
        assert sel['member_seconds'] == m['member_seconds_per_image'] == pytest.approx(cost)
        assert 0 < m['selection_seconds'] <= 0.05
        if limit is not None:
            assert m['member_seconds_per_image'] <= limit + 1e-6
        else:
            assert m['members_per_image'] == 2.0
    # the selection reads the probe only: the other members' files halved and their
    # scores shuffled, every image selects the same members
    rng = np.random.default_rng(0)
    scrambled = []
    for f in preds:
        entries = json.load(open(f))
        if osp.basename(f) != 'yolofastestv2-352.json':
            entries = [e for e in entries if rng.random() < 0.5]
            for e, s in zip(entries, rng.permutation([e['score'] for e in entries])):
                e['score'] = float(s)
        scrambled.append(str(tmp_path / osp.basename(f)))
        json.dump(entries, open(scrambled[-1], 'w'))
    again = tmp_path / 'sel2.json'
    fuse(['--ann', ann, '--preds', *scrambled, '--method', 'cel', '--checkpoint', ckpt,
          '--no-eval', '--selection-out', str(again), '--budget-seconds', '0.2'])
    before = json.loads((tmp_path / 'sel_budget-seconds.json').read_text())
    assert json.loads(again.read_text()) == before


def test_cel_budget_report_smoke_and_train_py_reproduces_its_fold_model(tmp_path):
    """The report's e2e-CEL of a fold is what tools/train.py trains on that fold: the
    warm start is computed inside training and equals the report's best fixed subset."""
    import torch
    work = str(tmp_path / 'budget')
    out = tool('tools/analysis_tools/cel_budget.py', '--work-dir', work, '--ks', '2',
               '--budgets', '0.2', '--folds', '2', '--max-images', '16', '--cfg-options', *FAST)
    report = json.load(open(osp.join(work, 'budget.json')))
    rows = report['rows']
    by = {(r['setting'], r['method']): r for r in rows}
    assert set(by) == {(s, m) for s in ('k=2', '0.2 s') for m in (
        'e2e-CEL', 'best fixed subset', 'random subset', "oracle, by each image's AP",
        "oracle, by the dataset's AP")} | {('all', 'all-member fusion')}
    for s in ('k=2', '0.2 s'):  # the greedy oracle starts at the best fixed subset
        assert by[(s, "oracle, by the dataset's AP")]['AP'] >= by[(s, 'best fixed subset')]['AP']
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
        ids = sorted(i['id'] for i in json.load(f)['images'])[:16]
    ids = fold_image_ids(ids, 2, 0, 'train', 0)
    train = str(tmp_path / 'train')
    # a process of its own, as each of the report's folds is
    tool('tools/train.py', CEL_DEFAULT, '--work-dir', train, '--cfg-options', *FAST,
         'model.selector.budget=0.2', f'train_dataloader.dataset.img_ids={ids}')
    from mmens.utils.setup_env import safe_torch_load  # weights only, mmens' allow-list
    mine = safe_torch_load(osp.join(train, 'epoch_1.pth'))['state_dict']
    theirs = safe_torch_load(osp.join(work, '0.2s', 'fold0', 'epoch_1.pth'))['state_dict']
    assert mine.keys() == theirs.keys() and 'selection_net.init_scores' in mine
    # selection_seconds is each fit's timing of its own selection (median, rounded up to
    # the ms): 0.001 in one process and 0.002 in the other on a loaded CI run. At 0.2 s no
    # subset is feasible with one and not with the other below ~15 ms, so every weight is
    # still the same
    assert all(0 < float(d.pop('selection_seconds')) <= 0.015 for d in (mine, theirs))
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
    code, _, err = run_tool('tools/analysis_tools/cel_budget.py', '--ks', '1', '--budgets',
                            '--folds', '100', '--max-images', '24')
    assert code == 2, err
    assert err.strip().endswith('100 folds need at least 100 images, got 24')
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1


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
