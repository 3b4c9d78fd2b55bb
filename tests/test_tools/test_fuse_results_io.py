"""fuse_results' fast I/O: the file it writes holds the detections of the per-image path
it replaced (same values, same order), for any chunking; the COCO-val-sized load that
times it is generated reproducibly (tools/analysis_tools/make_coco_load.py)."""
import glob
import json
import os.path as osp
import re

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


def test_fuse_results_script_as_in_process(tmp_path):
    """As a script (the member files prefetched during the imports): the same file as in
    process, and a bad member file stops with the same single line."""
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / 'fused.json'
    args = [sys.executable, 'tools/analysis_tools/fuse_results.py', '--ann', ANN,
            '--method', 'wbf', '--no-eval']
    proc = subprocess.run(args + ['--preds', *PREDS, '--out', str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'seconds: start-up \d+\.\d\d, .*read \d+\.\d\d \(prefetched\), fuse ',
                     proc.stdout), proc.stdout
    ref = tmp_path / 'ref.json'
    load_tool('fuse_results').main(['--ann', ANN, '--method', 'wbf', '--no-eval', '--preds',
                                    *PREDS, '--out', str(ref)])
    assert out.read_bytes() == ref.read_bytes()
    entries = json.load(open(PREDS[1]))
    entries[5]['bbox'][1] = float('nan')
    bad = tmp_path / osp.basename(PREDS[1])
    json.dump(entries, open(bad, 'w'))
    preds = [PREDS[0], str(bad), *PREDS[2:]]
    proc = subprocess.run(args + ['--preds', *preds], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    with pytest.raises(ValueError) as ref_err:
        load_tool('fuse_results').main(['--ann', ANN, '--method', 'wbf', '--no-eval',
                                        '--preds', *preds])
    assert proc.returncode == 2 and proc.stderr.strip() == f'error: {ref_err.value}'
    assert 'entry 5' in proc.stderr and "'bbox' has a NaN" in proc.stderr


@pytest.mark.parametrize('method, cfg', [
    ('wbf', dict(weights=[2, 1, 1, 1, 3, 1], iou_thr=0.6, conf_type='box_and_model_avg')),
    ('nms', dict(weights=[1, 1, 2, 1, 1, 1], iou_thr=0.4)),
    ('soft_nms', dict(sigma=0.3, thresh=0.01)),
    ('nmw', dict(skip_box_thr=0.05))])
def test_fixed_ensemble_fuses_as_the_fusion_detector(method, cfg):
    """The mmdet-free fixed rule of the file tools gives FusionDetector's detections."""
    from mmens.registry import MODELS
    batch = load_member_batch(load_coco(ANN, annotations=False), PREDS)
    fixed = build_fixed_ensemble(batch.names, method, **cfg)
    detector = MODELS.build(dict(type='FusionDetector', members=batch.names, method=method,
                                 fusion_cfg=cfg)).eval()
    for model in (fixed, detector):  # both: the same columns, whatever the chunking
        got = fuse_batch_arrays(model, batch, chunk=32)[0]
        if model is fixed:
            want = got
            assert len(want.score) > 1000
        for a, b in zip(got, want):
            assert (a == b).all()


def test_fixed_ensemble_refuses_bad_parameters_when_built():
    with pytest.raises(ValueError, match="'nms' takes no conf_type"):
        build_fixed_ensemble(['a', 'b'], 'nms', conf_type='avg')
    with pytest.raises(ValueError, match='iou_thr'):
        build_fixed_ensemble(['a', 'b'], 'wbf', iou_thr=1.5)
    with pytest.raises(ValueError, match='weights has 3 values for 2 members'):
        build_fixed_ensemble(['a', 'b'], 'wbf', weights=[1, 2, 3])
    with pytest.raises(ValueError, match="unknown fusion method 'mean'"):
        build_fixed_ensemble(['a', 'b'], 'mean')


def test_fuse_results_refuses_mistakes_before_any_work(tmp_path):
    """Each mistake is one ValueError, raised before the files are read: the corrupt
    annotation file given with it is never opened."""
    main = load_tool('fuse_results').main
    corrupt = tmp_path / 'ann.json'
    corrupt.write_text('{"images": [')
    fixed = ['--ann', str(corrupt), '--preds', *PREDS, '--method', 'wbf']
    cases = [
        (['--ann', str(corrupt), '--preds', str(tmp_path), '--method', 'wbf'],
         f'--preds {tmp_path} is a directory, not a COCO-results JSON file (one file per '
         'member, e.g. DIR/*.json)'),
        (['--ann', str(corrupt), '--preds', str(tmp_path / 'gone.json')],
         f"--preds {tmp_path / 'gone.json'} does not exist"),
        (['--ann', str(tmp_path / 'gone.json'), '--preds', *PREDS],
         f"--ann {tmp_path / 'gone.json'} does not exist"),
        (fixed + ['--out', '/etc/hostname/fused.json'],
         '--out /etc/hostname/fused.json: /etc/hostname is not a directory'),
        (fixed + ['--metrics-out', '/etc/hostname/m.json'],
         '--metrics-out /etc/hostname/m.json: /etc/hostname is not a directory'),
        (fixed + ['--out', str(tmp_path)], f'--out {tmp_path} is a directory'),
        (fixed + ['--weights', '1', '2'], '--weights has 2 values for 6 prediction files'),
        (fixed + ['--checkpoint', PREDS[0]], '--checkpoint is for --method learned/cel'),
        (fixed + ['--k', '2'], '--k / --budget-seconds are for --method cel, not wbf'),
        (fixed + ['--names', 'a'], '--names has 1 names for 6 prediction files'),
        (fixed + ['--chunk', '0'], '--chunk must be at least 1'),
        (fixed + ['--mask-thr', '1.5'], r'--mask-thr must be in (0, 1], got 1.5'),
        (fixed + ['--names', *'abcdea'], 'member names must be unique'),
        (fixed + ['--device', 'gpu'], "--device 'gpu' is not a torch device"),
        (['--ann', str(corrupt), '--preds', *PREDS, '--method', 'cel'],
         '--method cel needs --checkpoint'),
        (['--ann', str(corrupt), '--preds', *PREDS, '--method', 'learned', '--checkpoint',
          str(tmp_path / 'gone.pth')], f"--checkpoint {tmp_path / 'gone.pth'} does not exist"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            main(args)
    ann_ok = ['--ann', ANN, '--preds', *PREDS, '--no-eval']
    for args, msg in [(['--method', 'nms', '--conf-type', 'max'], "'nms' takes no conf_type"),
                      (['--method', 'wbf', '--iou-thr', '2'], 'iou_thr')]:
        with pytest.raises(ValueError, match=msg):  # the fusion's own check, when built
            main(ann_ok + args + ['--preds', str(corrupt)])


def test_file_tools_import_no_openmmlab_package_for_the_fixed_rules(tmp_path):
    """fuse_results with a fixed rule and validate_predictions import no module of mmdet,
    mmcv or mmengine (``-X importtime`` lists every import; fuse_results imports its
    evaluation at the start, only numba waits for the first AP)."""
    import subprocess
    import sys
    from conftest import ROOT
    tools = 'tools/analysis_tools/'
    runs = [[tools + 'fuse_results.py', '--ann', ANN, '--preds', *PREDS[:3], '--method',
             'soft_nms', '--no-eval', '--out', str(tmp_path / 'fused.json')],
            [tools + 'validate_predictions.py', '--ann', ANN, '--preds', *PREDS[:2]]]
    for args in runs:
        proc = subprocess.run([sys.executable, '-X', 'importtime', *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        imported = [line.rsplit('|', 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith('import time:')]
        assert 'torch' in imported and 'pycocotools.cocoeval' in imported
        openmmlab = [m for m in imported if m.split('.')[0] in ('mmdet', 'mmcv', 'mmengine')]
        assert openmmlab == [], (args[0], openmmlab[:10])
        if args[0].endswith('fuse_results.py'):  # nor, on the CPU, torch's CUDA bindings
            assert not [m for m in imported if m.startswith('cuda.bindings.')], args[0]


def test_rank_results_ranks_any_order_as_the_fusion_order():
    """rank_results skips its sorts on the fusion ops' order (by image, then score): the
    same detections shuffled give the same ranked output, through the sorts."""
    from mmens.ops.results import rank_results
    batch = load_member_batch(load_coco(ANN, annotations=False), PREDS)
    part = select_images(batch.packed, 0, 40)
    boxes, scores, labels, images = build_fixed_ensemble(batch.names, 'wbf').fuse(part)
    # ties broken in the fusion order, so that any order has one ranking
    scores = scores.double() - 1e-12 * torch.arange(len(scores), dtype=torch.float64)
    fused = boxes, scores, labels, images  # [K] in fusion order
    perm = torch.randperm(len(fused[1]), generator=torch.Generator().manual_seed(0))
    for max_per_img, score_thr in ((100, 0.0), (7, 0.2)):
        want = rank_results(*fused, part['image_sizes'], max_per_img, score_thr)
        got = rank_results(*(t[perm] for t in fused), part['image_sizes'], max_per_img,
                           score_thr)
        assert len(want[1]) > 150 and all(torch.equal(a, b) for a, b in zip(got, want))
        assert (torch.bincount(want[3]) <= max_per_img).all() and (want[1] >= score_thr).all()
