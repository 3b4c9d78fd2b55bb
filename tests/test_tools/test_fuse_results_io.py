"""fuse_results' fast I/O: the file it writes holds the detections of the per-image path
it replaced (same values, same order), for any chunking; the COCO-val-sized load that
times it is generated reproducibly (tools/analysis_tools/make_coco_load.py)."""
import glob
import json
import os.path as osp

import pytest
import torch

from conftest import DATA, load_tool
from mmens.apis import build_fixed_ensemble, fuse_batch_arrays, load_coco, load_member_batch
from mmens.apis.inference import member_remap
from mmens.apis.member_files import select_images
from mmens.datasets.coco_results import load_member_predictions
from mmens.evaluation.coco_eval import arrays_to_results, results_to_coco
from mmens.models.utils import split_results

ANN = osp.join(DATA, 'annotations', 'val.json')
PREDS = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))


def per_image_results(model, batch, chunk):
    """What fuse_batch computed before columns: a mask per chunk, a dict per detection."""
    remap = member_remap(model.members, batch.names)
    packed = dict(batch.packed, members=remap[batch.packed['members']])
    results, n_img = [], len(batch.img_ids)
    with torch.no_grad():
        for start in range(0, n_img, chunk):
            part = select_images(packed, start, min(n_img, start + chunk))
            inst = split_results(*model.fuse(part), part['image_sizes'], max_per_img=100)
            for i, r in enumerate(inst):
                ids = torch.full((len(r.scores),), start + i, dtype=torch.long)
                results += results_to_coco(r.bboxes, r.scores, r.labels, ids, batch.img_ids,
                                           batch.cat_ids)
    return results


@pytest.mark.parametrize('method', ['wbf', 'soft_nms'])
def test_fuse_results_writes_the_per_image_detections(tmp_path, capsys, method):
    out = tmp_path / 'fused.json'
    load_tool('fuse_results').main(['--ann', ANN, '--preds', *PREDS, '--method', method,
                                    '--no-eval', '--out', str(out), '--chunk', '32'])
    printed = capsys.readouterr().out
    assert 'seconds: annotations ' in printed and ', fuse ' in printed, printed
    coco = load_coco(ANN)
    batch = load_member_batch(coco, PREDS)
    model = build_fixed_ensemble(batch.names, method)
    want = per_image_results(model, batch, chunk=32)
    assert json.loads(out.read_text()) == want  # the same float64 values, in order
    for chunk in (7, 256):  # chunking is not part of the result
        assert arrays_to_results(fuse_batch_arrays(model, batch, chunk=chunk)[0]) == want


def test_load_coco_without_annotations_has_the_images_and_categories():
    full, part = load_coco(ANN), load_coco(ANN, annotations=False)
    assert part.dataset['images'] == full.dataset['images']
    assert part.loadCats(part.getCatIds()) == full.loadCats(full.getCatIds())
    assert len(full.getAnnIds()) == 815 and part.getAnnIds() == []


def test_make_coco_load_is_seeded_valid_and_unique(tmp_path):
    make = load_tool('make_coco_load').main
    for d in ('a', 'b'):
        make(['--images', '100', '--out-dir', str(tmp_path / d)])  # 80 + a partial copy
    files = sorted(glob.glob(str(tmp_path / 'a' / 'predictions' / '*.json')))
    assert len(files) == 6
    for f in files + [str(tmp_path / 'a' / 'annotations.json')]:  # rerunnable: same bytes
        assert open(f, 'rb').read() == open(f.replace('/a/', '/b/'), 'rb').read()
    ann = json.load(open(tmp_path / 'a' / 'annotations.json'))
    ids = [im['id'] for im in ann['images']]
    assert len(ids) == len(set(ids)) == 100
    assert len({a['id'] for a in ann['annotations']}) == len(ann['annotations'])
    sizes = {im['id']: (im['width'], im['height']) for im in ann['images']}
    cats = [c['id'] for c in ann['categories']]
    src = json.load(open(osp.join(DATA, 'predictions', 'val', osp.basename(files[0]))))
    p = load_member_predictions(files[0], sizes, cats)  # valid, nothing clipped
    assert p.report == {} and set(p.image_ids.tolist()) <= set(ids)
    copy1 = p.image_ids >= 1_000_000
    assert 0 < copy1.sum() < len(src) and len(p) - copy1.sum() == len(src)
