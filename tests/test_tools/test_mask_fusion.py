"""Instance masks through fuse_results and validate_predictions: fused masks that beat
every member, identical masks returned unchanged, one-line errors for bad masks."""
import json
import os.path as osp

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import DATA, load_tool

ANN = osp.join(DATA, 'annotations', 'val.json')
IMAGES = 20  # the first 20 val images: about 200 objects


@pytest.fixture(scope='module')
def ann(tmp_path_factory) -> str:
    """The annotation file cut to the first images and to their categories (pycocotools'
    evaluation time goes with images times categories)."""
    gt = json.load(open(ANN))
    keep = sorted(im['id'] for im in gt['images'])[:IMAGES]
    gt['images'] = [im for im in gt['images'] if im['id'] in keep]
    gt['annotations'] = [a for a in gt['annotations'] if a['image_id'] in keep]
    cats = {a['category_id'] for a in gt['annotations']}
    gt['categories'] = [c for c in gt['categories'] if c['id'] in cats]
    path = tmp_path_factory.mktemp('mask_ann') / 'ann.json'
    path.write_text(json.dumps(gt))
    return str(path)


@pytest.fixture(scope='module')
def members(tmp_path_factory, ann):
    out = tmp_path_factory.mktemp('mask_members')
    load_tool('make_mask_members').main(['--ann', ann, '--out-dir', str(out)])
    return {n: str(out / f'{n}.json') for n in ('shifted', 'dilated', 'eroded')}


def test_fused_masks_beat_every_member(ann, members, tmp_path, capsys):
    out, metrics = tmp_path / 'fused.json', tmp_path / 'metrics.json'
    load_tool('fuse_results').main(['--ann', ann, '--preds', *members.values(), '--out',
                                    str(out), '--metrics-out', str(metrics)])
    m = json.load(open(metrics))
    assert set(m['segm']['members']) == set(members) and 'AP' in m['fusion']
    best = max(v['AP'] for v in m['segm']['members'].values())
    margin = m['segm']['fusion']['AP'] - best
    with capsys.disabled():  # the margin, in every run's output
        print(f"\nsegm AP: members "
              f"{[round(v['AP'], 4) for v in m['segm']['members'].values()]}, "
              f"fusion {m['segm']['fusion']['AP']:.4f}, margin {margin:+.4f}")
    assert margin > 0.05  # measured +0.14 on the 80 images (docs/experiments.md)
    fused = json.load(open(out))
    assert all(set(d) == {'image_id', 'category_id', 'bbox', 'score', 'segmentation'}
               for d in fused)
    assert 'segm' in capsys.readouterr().out


def test_identical_members_give_back_their_masks(ann, tmp_path):
    """Three copies of one member: every fused detection is an input detection, with the
    same box and the same mask (polygons in, their RLE out)."""
    gt = json.load(open(ann))
    anns = [a for a in gt['annotations'] if not a['iscrowd']]
    entries = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'],
                    score=round(0.5 + 0.5 * (i % 7) / 7, 3), segmentation=a['segmentation'])
               for i, a in enumerate(anns)]
    files = []
    for k in range(3):
        files.append(str(tmp_path / f'copy{k}.json'))
        json.dump(entries, open(files[-1], 'w'))
    out = tmp_path / 'fused.json'
    load_tool('fuse_results').main(['--ann', ann, '--preds', *files, '--out', str(out),
                                    '--no-eval'])
    fused = json.load(open(out))
    sizes = {im['id']: (im['height'], im['width']) for im in gt['images']}
    want = {}
    for e in entries:
        h, w = sizes[e['image_id']]
        rle = mask_utils.merge(mask_utils.frPyObjects(e['segmentation'], h, w))
        key = (e['image_id'], e['category_id'], tuple(np.round(e['bbox'], 2)))
        want[key] = rle['counts'].decode()
    assert len(fused) == len(entries)
    for d in fused:
        key = (d['image_id'], d['category_id'], tuple(np.round(d['bbox'], 2)))
        assert d['segmentation']['counts'] == want[key], key


def _broken(members, tmp_path, how):
    entries = json.load(open(members['eroded']))
    how(entries)
    path = tmp_path / 'broken.json'
    path.write_text(json.dumps(entries))
    return str(path), entries[5]['image_id']


@pytest.mark.parametrize('how, message', [
    (lambda e: e[5]['segmentation'].update(size=[10, 10]),
     r"has size \[10, 10\], not its image's \[height, width\]"),
    (lambda e: e[5]['segmentation'].update(counts=e[5]['segmentation']['counts'][:-3]),
     'is a malformed RLE'),
    (lambda e: e[5]['segmentation'].update(counts=[5, 7]), 'is a malformed RLE'),
    (lambda e: e[5].update(segmentation=[[1, 2, 3, 4]]), 'polygon 0 needs at least 3'),
    (lambda e: e[5].pop('segmentation'), "missing field 'segmentation'"),
    (lambda e: e[5].update(segmentation=7), "field 'segmentation' must be an RLE"),
])
def test_bad_masks_stop_both_tools_with_one_line(ann, members, tmp_path, how, message):
    path, image = _broken(members, tmp_path, how)
    where = rf"member 'broken' \({path}\): entry 5 \(image_id {image}\): .*{message}"
    with pytest.raises(ValueError, match=where):
        load_tool('validate_predictions').main(['--ann', ann, '--preds', path])
    with pytest.raises(ValueError, match=where):
        load_tool('fuse_results').main(['--ann', ann, '--preds', members['shifted'], path,
                                        '--no-eval'])


def test_options_that_masks_cannot_take_are_refused(ann, members):
    fuse = load_tool('fuse_results').main
    preds = ['--ann', ann, '--preds', *members.values()]
    with pytest.raises(ValueError, match='fused over WBF clusters: use --method wbf'):
        fuse(preds + ['--method', 'nms'])
    with pytest.raises(ValueError, match='--repair drops entries'):
        fuse(preds + ['--repair'])
    with pytest.raises(ValueError, match=r'--mask-thr must be in \(0, 1\]'):
        fuse(preds + ['--mask-thr', '0'])
    with pytest.raises(ValueError, match='carries masks: --repair rewrites boxes only'):
        load_tool('validate_predictions').main(preds + ['--repair'])


def test_segm_bootstrap_pairs_the_same_resamples(ann, members, capsys):
    from mmens.apis.member_files import load_coco
    from mmens.evaluation.segm_eval import SegmEvaluation, coco_segm_metrics
    coco = load_coco(ann)
    dilated = json.load(open(members['dilated']))
    ev = SegmEvaluation(coco, dilated)
    assert ev.metrics() == coco_segm_metrics(coco, dilated)
    positions = np.array([0, 0, 3, 5, 5, 5, 7, 11, 19])  # a resample: repeats, gaps
    # the compiled AP of a resample is pycocotools' accumulate over those images
    assert ev.ap(positions) == pytest.approx(ev.metrics(positions)['AP'], abs=1e-12)
    assert ev.ap(np.arange(IMAGES)) == pytest.approx(ev.metrics()['AP'], abs=1e-12)
    load_tool('segm_bootstrap').main(['--ann', ann, '--fused', members['dilated'],
                                      '--members', members['eroded'], '--samples', '20'])
    row = capsys.readouterr().out.splitlines()[-1].split()
    eroded = coco_segm_metrics(coco, json.load(open(members['eroded'])))['AP']
    assert row[0] == 'eroded.json' and float(row[1]) == pytest.approx(eroded, abs=1e-4)
    assert float(row[2]) == pytest.approx(ev.metrics()['AP'] - eroded, abs=1e-4)
