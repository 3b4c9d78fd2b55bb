"""tools/analysis_tools/analyze_ensemble.py on a subset of the embedded val files."""
import csv
import json
import os.path as osp

import numpy as np
import pytest

from conftest import DATA, load_tool

MEMBERS = ['centernet-512', 'nanodet-416']
NUM_IMAGES = 12


@pytest.fixture(scope='module')
def subset(tmp_path_factory):
    """The first 12 val images: annotation file, two member files, their WBF file."""
    from mmens.apis import build_fixed_ensemble
    from mmens.apis.inference import fuse_batch
    from mmens.apis.member_files import load_coco, load_member_batch
    tmp = tmp_path_factory.mktemp('analyze')
    ann = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    images = sorted(ann['images'], key=lambda im: im['id'])[:NUM_IMAGES]
    ids = {im['id'] for im in images}
    ann_file = str(tmp / 'ann.json')
    json.dump(dict(ann, images=images,
                   annotations=[a for a in ann['annotations'] if a['image_id'] in ids]),
              open(ann_file, 'w'))
    files = []
    for name in MEMBERS:
        entries = json.load(open(osp.join(DATA, 'predictions', 'val', f'{name}.json')))
        files.append(str(tmp / f'{name}.json'))
        json.dump([e for e in entries if e['image_id'] in ids], open(files[-1], 'w'))
    coco = load_coco(ann_file)
    fused = str(tmp / 'fused.json')
    json.dump(fuse_batch(build_fixed_ensemble(MEMBERS, 'wbf'),
                         load_member_batch(coco, files))[0], open(fused, 'w'))
    return tmp, ann_file, files, fused, coco


def table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def wbf_ap(coco, files):
    """AP of the WBF of ``files`` (the re-fusion leave-one-out should give)."""
    from mmens.apis import build_fixed_ensemble
    from mmens.apis.inference import fuse_batch
    from mmens.apis.member_files import load_member_batch
    from mmens.evaluation.coco_eval import CocoEvaluation
    batch = load_member_batch(coco, files)
    res = fuse_batch(build_fixed_ensemble(batch.names, 'wbf'), batch)[0]
    return CocoEvaluation(coco, res, ap_only=True).ap(np.arange(NUM_IMAGES))


def test_tables_plot_and_leave_one_out(subset):
    from mmens.apis.member_files import load_member_batch, member_results
    from mmens.evaluation.coco_eval import coco_metrics
    tmp, ann_file, files, fused, coco = subset
    out = str(tmp / 'out')
    load_tool('analyze_ensemble').main(['--ann', ann_file, '--preds', *files, '--fused', fused,
                                        '--out-dir', out, '--bootstrap', '20'])
    rows = {r['name']: r for r in table(osp.join(out, 'members.csv'))}
    assert list(rows) == MEMBERS + ['ensemble']
    want = coco_metrics(coco, member_results(load_member_batch(coco, files[:1]).members[0]))
    for key, value in want.items():
        assert float(rows[MEMBERS[0]][key]) == pytest.approx(value, abs=1e-6)
    for name in MEMBERS:
        d = float(rows[name]['dAP_vs_ensemble'])
        assert d == pytest.approx(float(rows[name]['AP']) - float(rows['ensemble']['AP']),
                                  abs=1e-6)
        assert float(rows[name]['dAP_lo']) <= float(rows[name]['dAP_hi'])
    # leave-one-out of two members: the ensemble without one is WBF of the other alone
    loo = {r['member']: r for r in table(osp.join(out, 'leave_one_out.csv'))}
    everyone = float(rows['ensemble']['AP'])  # the fused file is the same WBF
    for m, name in enumerate(MEMBERS):
        alone = wbf_ap(coco, [files[1 - m]])
        assert float(loo[name]['AP_without']) == pytest.approx(alone, abs=1e-6)
        assert float(loo[name]['contribution']) == pytest.approx(everyone - alone, abs=1e-6)
    per_class = table(osp.join(out, 'per_class_ap.csv'))
    assert len(per_class) == 80 and list(per_class[0]) == ['category', *MEMBERS, 'ensemble']
    person = next(r for r in per_class if r['category'] == 'person')
    assert 0 < float(person['ensemble']) <= 1
    with open(osp.join(out, 'pr_curve.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    summary = open(osp.join(out, 'summary.md')).read()
    assert '## Leave-one-out (wbf re-fused without each member)' in summary
    assert 'not the fused file' not in summary  # the rule given made the fused file
    assert 'warning' not in summary


def test_wbf_of_a_single_model_warns_with_both_aps(subset, capsys):
    from mmens.apis import build_fixed_ensemble
    from mmens.apis.inference import fuse_batch
    from mmens.apis.member_files import load_member_batch
    tmp, ann_file, files, _, coco = subset
    one = str(tmp / 'wbf_one.json')
    json.dump(fuse_batch(build_fixed_ensemble([MEMBERS[0]], 'wbf'),
                         load_member_batch(coco, files[:1]))[0], open(one, 'w'))
    out = str(tmp / 'out1')
    load_tool('analyze_ensemble').main(['--ann', ann_file, '--preds', files[0], '--fused', one,
                                        '--out-dir', out, '--bootstrap', '20'])
    err = capsys.readouterr().err
    assert f'warning: WBF of a single model ({MEMBERS[0]}): AP ' in err
    wbf, nms = (float(x) for x in np.array(err.split('AP ')[1].split(' for')[0].split(
        ' against ')))
    assert wbf == pytest.approx(100 * wbf_ap(coco, files[:1]), abs=0.01) and nms != wbf
    assert 'one member: nothing to leave out' in open(osp.join(out, 'summary.md')).read()


def test_bad_input_is_one_line(subset, tmp_path):
    _, ann_file, files, fused, _ = subset
    tool = load_tool('analyze_ensemble')
    bad = str(tmp_path / 'bad.json')
    entries = json.load(open(fused))
    entries[3]['image_id'] = 123456789
    json.dump(entries, open(bad, 'w'))
    base = ['--ann', ann_file, '--preds', *files, '--out-dir', str(tmp_path / 'o')]
    with pytest.raises(ValueError, match=r'bad\.json.*entry 3.*123456789') as e:
        tool.main(base + ['--fused', bad])
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='--weights has 1 values for 2 --preds files'):
        tool.main(base + ['--fused', fused, '--weights', '2'])
    with pytest.raises(ValueError, match='does not exist'):
        tool.main(base + ['--fused', str(tmp_path / 'missing.json')])
