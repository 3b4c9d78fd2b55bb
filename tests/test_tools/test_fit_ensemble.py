"""tools/analysis_tools/fit_ensemble.py: learn from files on one split, apply with
fuse_results.py to another (3 embedded members, val split in two halves of 40 images).

fit_ensemble runs through its command line (forked from ``tests/tool_server.py``, which
has made the imports); fuse_results runs in process (its ``main(argv)``, the same code as
its command line)."""
import json
import os
import os.path as osp
import re
import shlex
from types import SimpleNamespace

import pytest
import torch

from conftest import DATA, load_tool, run_tool
from mmens.utils import safe_torch_load

MEMBERS = ['centernet-512', 'nanodet-416', 'yolofastestv2-352']
FIT = 'tools/analysis_tools/fit_ensemble.py'
FUSE = 'tools/analysis_tools/fuse_results.py'


def run(args, expect=0):
    """``python ARGS`` in ROOT (forked from tests/tool_server.py)."""
    status, stdout, stderr = run_tool(*args)
    assert status == expect, (stdout + stderr)[-4000:]
    return SimpleNamespace(stdout=stdout, stderr=stderr)


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
    """val.json split by image into a labelled half (fit) and a 'test' half (apply)."""
    root = tmp_path_factory.mktemp('splits')
    gt = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    ids = sorted(im['id'] for im in gt['images'])
    out = {}
    for split, keep in (('fit', set(ids[0::2])), ('test', set(ids[1::2]))):
        os.makedirs(root / split)
        ann = dict(gt, images=[im for im in gt['images'] if im['id'] in keep],
                   annotations=[a for a in gt['annotations'] if a['image_id'] in keep])
        json.dump(ann, open(root / split / 'ann.json', 'w'))
        preds = []
        for m in MEMBERS:
            entries = json.load(open(osp.join(DATA, 'predictions', 'val', f'{m}.json')))
            preds.append(str(root / split / f'{m}.json'))
            json.dump([e for e in entries if e['image_id'] in keep], open(preds[-1], 'w'))
        out[split] = dict(ann=str(root / split / 'ann.json'), preds=preds, ids=keep)
    return out


def fuse(args):
    load_tool('fuse_results').main(args)


def fitted(stdout):
    ckpt = re.search(r'^checkpoint: (\S+)$', stdout, re.M)
    assert ckpt, stdout[-3000:]
    return ckpt.group(1)


@pytest.fixture(scope='module')
def learned_fit(splits, tmp_path_factory):
    """``fit_ensemble.py --method learned`` with no options on the fit half: (its output,
    the checkpoint, the work dir)."""
    fit = splits['fit']
    work = str(tmp_path_factory.mktemp('learned'))
    proc = run([FIT, '--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'learned',
                '--work-dir', work])
    return proc, fitted(proc.stdout), work


def test_learned_fit_then_fuse_results_on_the_test_split(splits, learned_fit, tmp_path):
    fit, test = splits['fit'], splits['test']
    proc, ckpt, work = learned_fit
    # it printed the fusion thresholds (the config's: the default searches none, 1fa063d)
    # and each member's weight
    assert re.search(r'^fusion: iou_thr 0\.\d+, skip_box_thr [0-9.]+, conf_type \w+$',
                     proc.stdout, re.M), proc.stdout[-3000:]
    assert len(re.findall(r'^member \S+: weight \d\.\d\d', proc.stdout, re.M)) == 3
    assert ckpt == osp.join(work, 'epoch_1.pth') and osp.isfile(ckpt)
    assert osp.isfile(osp.join(work, 'fit_ensemble_learned.py'))
    # the printed command is the one that applies it
    cmd = proc.stdout.strip().splitlines()[-1].split()
    assert cmd[:2] == ['python', FUSE] and cmd[cmd.index('--checkpoint') + 1] == ckpt
    # the Runner's validation after the fit (on the fit split; mmdet rounds to 3 decimals)
    fit_ap = float(re.findall(r'coco/bbox_mAP: ([0-9.]+)', proc.stdout + proc.stderr)[-1])
    # ... is what fuse_results gives on the same files with the checkpoint
    m_fit = tmp_path / 'fit.json'
    fuse(['--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'learned',
          '--checkpoint', ckpt, '--metrics-out', str(m_fit)])
    assert json.loads(m_fit.read_text())['fusion']['AP'] == pytest.approx(fit_ap, abs=6e-4)
    # the learned WBF weights (θ = softplus(φ), mean 1) are not the equal ones
    state = safe_torch_load(ckpt, map_location='cpu')['state_dict']
    theta = torch.nn.functional.softplus(state['head.phi'])
    weights = theta / theta.mean()
    assert weights.shape == (3,) and (weights - 1).abs().max() > 0.05, weights
    # applied to the other half: entries for every image of it, and only of it
    fused, m_test = tmp_path / 'fused.json', tmp_path / 'test.json'
    fuse(['--ann', test['ann'], '--preds', *test['preds'][::-1], '--method', 'learned',
          '--checkpoint', ckpt, '--out', str(fused), '--metrics-out', str(m_test)])
    entries = json.loads(fused.read_text())
    assert {e['image_id'] for e in entries} == test['ids']
    m = json.loads(m_test.read_text())
    best_member = max(v['AP'] for v in m['members'].values())
    assert m['fusion']['AP'] > best_member, m  # the learned fusion beats every member


def test_fuse_results_and_the_runner_apply_thresholds_and_weights(
        splits, learned_fit, tmp_path):
    """The fitted checkpoint with other thresholds and member weights written into it:
    fuse_results --checkpoint and the Runner (tools/test.py's path: the config
    fit_ensemble wrote, the checkpoint) give the same fused detections, which differ
    from the fit's own."""
    import pickle

    from mmengine.config import Config

    from mmens.apis import load_coco
    from mmens.evaluation.coco_eval import results_to_coco
    from mmens.registry import RUNNERS
    from mmens.utils import register_all_modules
    fit = splits['fit']
    _, ckpt, work = learned_fit
    saved = safe_torch_load(ckpt, map_location='cpu')
    state = saved['state_dict']
    state.update(fusion_iou_thr=torch.tensor(0.7, dtype=torch.float64),
                 fusion_skip_box_thr=torch.tensor(0.05, dtype=torch.float64),
                 fusion_conf_type=torch.tensor(2))  # box_and_model_avg
    cfg = Config.fromfile(osp.join(work, 'fit_ensemble_learned.py'))
    phi = state['head.phi']  # other member weights than the fit's
    state['head.phi'] = phi + torch.tensor([1.5, -1.5, 0.5], dtype=phi.dtype)
    other = str(tmp_path / 'other.pth')
    torch.save(dict(meta=saved['meta'], state_dict=state), other)
    outs = {}
    for name, path in (('fit', ckpt), ('other', other)):
        outs[name] = tmp_path / f'{name}.json'
        fuse(['--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'learned',
              '--checkpoint', path, '--out', str(outs[name]), '--no-eval'])
    by_fuse = json.loads(outs['other'].read_text())
    assert by_fuse != json.loads(outs['fit'].read_text())
    register_all_modules()
    dump = str(tmp_path / 'runner.pkl')
    cfg.merge_from_dict(dict(load_from=other, work_dir=str(tmp_path / 'runner'),
                             log_level='WARNING'))
    cfg.test_evaluator = dict(type='DumpDetResults', out_file_path=dump)  # no COCO eval
    RUNNERS.build(cfg).test()
    preds = pickle.load(open(dump, 'rb'))
    coco = load_coco(fit['ann'])
    img_ids = [p['img_id'] for p in preds]
    cat_ids = [c['id'] for c in coco.dataset['categories']]
    inst = [p['pred_instances'] for p in preds]
    by_runner = results_to_coco(
        torch.cat([i['bboxes'] for i in inst]), torch.cat([i['scores'] for i in inst]),
        torch.cat([i['labels'] for i in inst]),
        torch.cat([torch.full((len(i['scores']),), b) for b, i in enumerate(inst)]),
        img_ids, cat_ids)

    def key(e):
        return e['image_id'], -e['score'], e['category_id'], e['bbox']
    assert len(by_runner) == len(by_fuse)
    for a, b in zip(sorted(by_runner, key=key), sorted(by_fuse, key=key)):
        assert (a['image_id'], a['category_id']) == (b['image_id'], b['category_id'])
        assert a['score'] == pytest.approx(b['score'], abs=2e-6)
        assert a['bbox'] == pytest.approx(b['bbox'], abs=2e-3)


def test_cel_fit_under_a_time_budget(splits, tmp_path):
    fit, test = splits['fit'], splits['test']
    work = str(tmp_path / 'cel')
    proc = run([FIT, '--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'cel',
                '--budget-seconds', '0.2', '--members-json', osp.join(DATA, 'members.json'),
                '--work-dir', work, '--cfg-options', 'train_cfg.steps=10',
                'model.selector.num_samples=100'])
    ckpt = fitted(proc.stdout)
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(work, 'fit_ensemble_cel.py'))
    assert cfg.model.members == MEMBERS and cfg.model.selector.budget == 0.2
    assert cfg.model.member_seconds == [0.17015, 0.17264, 0.00357]
    assert cfg.model.probes == ['yolofastestv2-352']  # the recommended config's probe
    assert cfg.train_dataloader.dataset.members[0]['file'] == fit['preds'][0]
    metrics = tmp_path / 'm.json'
    fuse(['--ann', test['ann'], '--preds', *test['preds'], '--method', 'cel',
          '--checkpoint', ckpt, '--metrics-out', str(metrics)])
    m = json.loads(metrics.read_text())['fusion']
    assert 0.0 < m['member_seconds_per_image'] <= 0.2 + 1e-6  # a CenterNet or NanoDet + YOLO
    assert 1.0 <= m['members_per_image'] <= 2.0 and m['AP'] > 0.15
    # the same model trained to select k members has no member costs: a time budget is
    # refused in one line before any file is read (it selected no member and wrote 0
    # detections)
    ckpt_k = tmp_path / 'cel_k.pth'
    saved = safe_torch_load(ckpt, map_location='cpu')
    cfg.model.selector = dict(k=2, num_samples=100)
    cfg.model.member_seconds = None
    saved['meta']['cfg'] = cfg.pretty_text
    torch.save(dict(meta=saved['meta'], state_dict=saved['state_dict']), ckpt_k)
    with pytest.raises(ValueError, match=r"--budget-seconds needs the members' costs .*"
                       f'{re.escape(str(ckpt_k))} has none'):
        fuse(['--ann', test['ann'], '--preds', *test['preds'], '--method', 'cel',
              '--checkpoint', str(ckpt_k), '--budget-seconds', '0.4', '--no-eval',
              '--out', str(tmp_path / 'never.json')])
    assert not (tmp_path / 'never.json').exists()
    fuse(['--ann', test['ann'], '--preds', *test['preds'], '--method', 'cel',  # k: runs
          '--checkpoint', str(ckpt_k), '--k', '1', '--metrics-out', str(metrics)])
    assert json.loads(metrics.read_text())['fusion']['members_per_image'] == 1.0


def test_bad_file_is_the_same_one_line_error_as_fuse_results(splits, tmp_path):
    fit = splits['fit']
    entries = json.load(open(fit['preds'][1]))
    entries[3]['bbox'][2] = float('nan')
    bad = str(tmp_path / 'nanodet-416.json')
    json.dump(entries, open(bad, 'w'))  # writes NaN, as Python's json does
    preds = [fit['preds'][0], bad, fit['preds'][2]]
    work = tmp_path / 'never'
    out = run([FIT, '--ann', fit['ann'], '--preds', *preds, '--method', 'learned',
               '--work-dir', str(work)], expect=2)
    with pytest.raises(ValueError) as ref:  # what fuse_results' run_cli prints
        fuse(['--ann', fit['ann'], '--preds', *preds, '--method', 'wbf'])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    assert lines[0] == f'error: {ref.value}'
    assert "member 'nanodet-416'" in lines[0] and bad in lines[0]
    assert "field 'bbox' has a NaN" in lines[0] and 'entry 3' in lines[0]
    assert not work.exists()  # nothing trained


def test_argument_and_file_errors_in_process(splits, tmp_path):
    fit = splits['fit']
    main = load_tool('fit_ensemble').main
    base = ['--ann', fit['ann'], '--work-dir', str(tmp_path / 'w')]
    truncated = tmp_path / 'trunc.json'
    truncated.write_text(open(fit['preds'][0]).read()[:500])
    unknown = json.load(open(fit['preds'][2]))
    unknown[0]['image_id'] = 123456789
    json.dump(unknown, open(tmp_path / 'unknown.json', 'w'))
    cases = [
        (['--preds', str(tmp_path / 'gone.json'), '--method', 'learned'],
         f"--preds {tmp_path / 'gone.json'} does not exist"),
        (['--preds', str(tmp_path), '--method', 'learned'],
         f'--preds {tmp_path} is a directory, not a COCO-results JSON file'),
        (['--preds', *fit['preds'], '--method', 'learned', '--work-dir', '/etc/hostname/w'],
         '--work-dir /etc/hostname/w: /etc/hostname is not a directory'),
        (['--preds', *fit['preds'], '--method', 'learned', '--config', 'configs/nope.py'],
         '--config configs/nope.py does not exist'),
        (['--preds', *fit['preds'], '--method', 'learned', '--config',
          osp.join(DATA, 'members.json')], 'could not be read as an mmengine config'),
        (['--preds', *fit['preds'], '--method', 'learned', '--cfg-options',
          'train_cfg.stepz=3'], "train_cfg has no key 'stepz' (did you mean 'steps'?)"),
        (['--preds', str(truncated), '--method', 'learned'],
         "member 'trunc': " + str(truncated) + ' is not valid JSON (truncated or corrupt?)'),
        (['--preds', str(tmp_path / 'unknown.json'), '--method', 'learned'],
         "entry 0 (image_id 123456789): field 'image_id' is not an image of the annotation"),
        (['--preds', *fit['preds'], '--method', 'learned', '--k', '2'],
         '--k / --budget-seconds are for --method cel, not learned'),
        (['--preds', *fit['preds'], '--method', 'cel'],
         '--method cel needs exactly one of --k'),
        (['--preds', *fit['preds'], '--method', 'cel', '--budget-seconds', '0.2'],
         '--budget-seconds needs each member\'s seconds per image'),
        (['--preds', *fit['preds'], '--method', 'cel', '--budget-seconds', '0.2',
          '--member-seconds', '0.1', '0.2'], '--member-seconds has 2 values for 3'),
        (['--preds', *fit['preds'], '--method', 'cel', '--budget-seconds', '0.001',
          '--member-seconds', '0.1', '0.2', '0.01'], 'below the cheapest member'),
        (['--preds', *fit['preds'], '--method', 'cel', '--k', '4'],
         '--k must be between 1 and the 3 members'),
        (['--preds', *fit['preds'], '--method', 'cel', '--k', '2', '--probes', 'nope'],
         "--probes ['nope'] are not members"),
        (['--preds', *fit['preds'], '--method', 'cel', '--budget-seconds', '0.15',
          '--member-seconds', '0.1', '0.2', '0.01', '--probes', 'nanodet-416'],
         "--budget-seconds 0.15 is below the probes ['nanodet-416'] (0.2 s per image)"),
        (['--preds', *fit['preds'], '--names', 'a', 'b', '--method', 'learned'],
         '2 names for 3 prediction files'),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            main(base + args)
    assert not (tmp_path / 'w').exists()


def test_fixed_rule_settings_by_ap_and_the_printed_command_applies_them(splits, tmp_path,
                                                                        capsys):
    fit = splits['fit']
    main = load_tool('fit_ensemble').main
    fit_tool = load_tool('fit_ensemble')
    main(['--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'nms',
          '--work-dir', str(tmp_path / 'nms')])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / 'nms' / 'fit_ensemble_nms.json').read_text())
    tried = [t['ap'] for t in saved['tried']]
    assert [dict(iou_thr=t['iou_thr']) for t in saved['tried']] == fit_tool.FIXED_GRIDS['nms']
    assert saved['ap'] == max(tried) and saved['iou_thr'] == saved['tried'][
        tried.index(max(tried))]['iou_thr']
    assert re.search(rf"^nms: iou_thr {saved['iou_thr']} \(COCO AP ", out, re.M), out
    # the printed fuse_results command gives that AP
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[:2] == ['python', FUSE] and cmd[cmd.index('--iou-thr') + 1] == str(
        saved['iou_thr'])
    metrics = tmp_path / 'm.json'
    fuse(cmd[2:cmd.index('--out')] + ['--metrics-out', str(metrics)])
    assert json.loads(metrics.read_text())['fusion']['AP'] == pytest.approx(saved['ap'],
                                                                            abs=6e-4)
    with pytest.raises(ValueError, match='--config / --cfg-options are for --method learned'):
        main(['--ann', fit['ann'], '--preds', *fit['preds'], '--method', 'soft_nms',
              '--work-dir', str(tmp_path / 's'), '--cfg-options', 'a=1'])
