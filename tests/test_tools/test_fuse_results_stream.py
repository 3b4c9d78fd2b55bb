"""fuse_results in bounded memory: the block decoder (mmens._results_io) reads what the
general decoders read and hands them what it cannot; the block-wise validation raises
and reports what one pass over the file does; --shard and --workers leave the output
unchanged; the SLURM scripts pass their arguments to srun."""
import functools
import glob
import json
import os
import os.path as osp
import re
import subprocess

import numpy as np
import pytest

from conftest import DATA, ROOT, load_tool
from mmens.datasets import coco_results as cr

ANN = osp.join(DATA, 'annotations', 'val.json')
PREDS = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))

pytestmark = pytest.mark.skipif(cr._results_io() is None, reason='mmens._results_io not built')


def general(path):
    """The columns of the general decoders (msgspec, then json): the reference."""
    entries = cr._decode_untyped(open(path, 'rb').read(), path, 'm')
    return cr._to_arrays(entries, 'm', path)


def blocks(path, rows, block):
    parts = list(cr.iter_results_columns(path, 'm', rows=rows, block=block))
    return tuple(np.concatenate(c) for c in zip(*parts))


def test_block_decoder_reads_any_split_of_a_file_as_the_general_decoders(tmp_path):
    """Entries cut by a block's end, blocks smaller than an entry (the block grows), other
    keys of any JSON value, any key order and white space, numbers in every JSON form."""
    text = ('\n [ {"score": 0.5, "bbox": [1, 2.5e1, 3E-1, -0.0], "category_id": 18, '
            '"image_id": 9223372036854775807, "x": {"a": [1, {"b": null}], "c": "q\\"}"}},'
            '{"image_id":-3,"segmentation":[[1,2,3]],"category_id":1,"bbox":[0.1,1e300,'
            '123456789012345678901234567890,4],"score":1, "t": true, "f": false, "s": "\\u00e9"}'
            ' ]\n')
    odd = tmp_path / 'odd.json'
    odd.write_text(text)
    want = general(str(odd))
    for path in (str(odd), PREDS[0]):
        want = general(path)
        for rows, block in ((1, 16), (3, 100), (1 << 18, 1 << 24)):
            got = blocks(path, rows, block)
            assert all(g.dtype == w.dtype and g.shape == w.shape and (g == w).all()
                       for g, w in zip(got, want)), (path, rows, block)
        assert all((g == w).all() for g, w in zip(cr.read_results_columns(path), want))
        fields = set()  # masks are skipped, and said: fuse_results has a path for them
        list(cr.iter_results_columns(path, 'm', fields=fields))
        assert fields == ({'segmentation'} if path == str(odd) else set())


@pytest.mark.parametrize('text', [
    '', '{}', '[', '[{"image_id": 1}]', '[1]', '[{"image_id": 1.0, "category_id": 1, '
    '"bbox": [1, 2, 3, 4], "score": 0.5}]', '[{"image_id": NaN}]', '[] []', '[{},]',
    '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]',
    '[{"image_id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]',
    '[{"image_id": 99999999999999999999, "category_id": 1, "bbox": [1, 2, 3, 4], '
    '"score": 1}]', '[{"image_id": 1, "category_id": 1, "bbox": [01, 2, 3, 4], "score": 1}]'])
def test_block_decoder_leaves_the_rest_to_the_general_decoders(tmp_path, text):
    path = tmp_path / 'm.json'
    path.write_text(text)
    with pytest.raises(cr.NotPlainLayout):
        list(cr.iter_results_columns(str(path), 'm', rows=1, block=8))
    try:  # and read_results_columns gives what the general decoders give
        want = general(str(path))
    except ValueError as e:
        with pytest.raises(ValueError, match=re.escape(str(e))):
            cr.read_results_columns(str(path), 'm')
    else:
        assert all((g == w).all() for g, w in zip(cr.read_results_columns(str(path)), want))


def bad_member(tmp_path):
    entries = json.load(open(PREDS[2]))
    entries[3]['score'] = 1.5
    for i in (40, 41, 90):
        entries[i]['image_id'] = 12345
    entries[60]['bbox'][2] = -1.0
    entries[70]['bbox'] = [10000.0, 5.0, 3.0, 3.0]  # outside the image: zero size
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(entries))
    return str(path), len(entries)


def test_block_validation_errors_and_repairs_as_one_pass(tmp_path, monkeypatch):
    """Without repair the first failing check over the whole file (not the first block's)
    with its first entry and count; with repair the same kept detections and report."""
    from mmens.apis.member_files import load_coco
    coco = load_coco(ANN, annotations=False)
    sizes = {im['id']: (im['width'], im['height']) for im in coco.dataset['images']}
    cats = sorted(coco.getCatIds())
    path, n = bad_member(tmp_path)
    columns = cr.read_results_columns(path, 'bad')
    with pytest.raises(ValueError) as whole:
        cr.validate_columns(columns, 'bad', sizes, cats, source=path)
    assert "entry 60 (image_id" in str(whole.value) and 'negative width' in str(whole.value)
    want = cr.validate_columns(columns, 'bad', sizes, cats, source=path, repair=True)
    assert list(want.report) == ['dropped_negative_size', 'dropped_unknown_image_id',
                                 'clipped_score', 'clipped_to_image', 'dropped_zero_size']
    for rows in (7, 50, n):  # the negative size in a later block than the other errors
        check = cr.ColumnValidator('bad', sizes, cats, path)
        for s in range(0, n, rows):
            check.add(tuple(c[s:s + rows] for c in columns))
        with pytest.raises(ValueError, match=re.escape(str(whole.value))):
            check.finish()
        check = cr.ColumnValidator('bad', sizes, cats, path, repair=True)
        parts = [check.add(tuple(c[s:s + rows] for c in columns)) for s in range(0, n, rows)]
        assert check.finish() == want.report
        images, categories, boxes, scores = (np.concatenate(c) for c in zip(*parts))
        assert (check.image_ids[images] == want.image_ids).all()
        assert (check.cat_ids[categories] == want.category_ids).all()
        assert (boxes == want.bboxes).all() and (scores == want.scores).all()
    got = cr.read_member_columns(path, 'bad', sizes, cats, repair=True)
    assert got.report == want.report and got.bboxes.dtype == np.float32
    assert (got.scores == want.scores).all() and got.images.dtype == np.int32
    # read by groups of images (-1: left out): a stable sort by group, block by block
    monkeypatch.setattr(cr, 'iter_results_columns',
                        functools.partial(cr.iter_results_columns, rows=37))
    group_of = np.random.default_rng(0).integers(-1, 5, len(sizes)).astype(np.int32)
    by = cr.read_member_columns(path, 'bad', sizes, cats, repair=True, groups=(group_of, 5))
    g = group_of[got.images]
    order = np.argsort(g, kind='stable')[np.count_nonzero(g < 0):]
    assert (by.bounds == np.searchsorted(g[order], np.arange(6))).all()
    for key in ('images', 'categories', 'bboxes', 'scores'):
        assert (getattr(by, key) == getattr(got, key)[order]).all()


def test_compiled_pass_gives_the_numpy_checks_values(monkeypatch):
    """The valid case in one compiled pass (compact_block): the numpy checks' columns,
    bit for bit (-0.0 clipped to +0.0 as np.clip does), and the same clipping count."""
    from mmens.apis.member_files import load_coco
    coco = load_coco(ANN, annotations=False)
    sizes = {im['id']: (im['width'], im['height']) for im in coco.dataset['images']}
    cats = sorted(coco.getCatIds())
    columns = cr.read_results_columns(PREDS[0])
    columns[2][:5, 0], columns[2][5:9, 0], columns[2][9, 2] = -0.0, -3.0, 1e5
    got = cr.validate_columns(columns, 'm', sizes, cats)
    monkeypatch.setattr(cr, '_IO', [None])  # no compiled module: numpy alone
    want = cr.validate_columns(columns, 'm', sizes, cats)
    assert got.report == want.report and got.report['clipped_to_image'] >= 5
    for key in ('image_ids', 'category_ids', 'bboxes', 'scores'):
        a, b = getattr(got, key), getattr(want, key)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key


def merged(paths, img_order):
    """The shards' entries in image-id order (stable), as one results file."""
    entries = []
    for p in paths:
        text = open(p, 'rb').read()[2:-2]
        entries += [b'{' + e + b'}' for e in text.split(b'},{')] if text else []
    image = [int(re.match(rb'\{"image_id":(-?\d+)', e)[1]) for e in entries]
    order = sorted(range(len(entries)), key=lambda i: img_order[image[i]])
    return b'[' + b','.join(entries[i] for i in order) + b']'


def test_shards_and_workers_give_the_unsharded_output(tmp_path):
    """--shard I/N for every I: the entries of the outputs, put in image order, are the
    unsharded output byte for byte; --workers 2 writes the same bytes as one."""
    load = tmp_path / 'load'
    load_tool('make_coco_load').main(['--images', '110', '--out-dir', str(load)])
    main = load_tool('fuse_results').main
    args = ['--ann', str(load / 'annotations.json'), '--preds',
            *sorted(glob.glob(str(load / 'predictions' / '*.json')))[::2], '--no-eval',
            '--chunk', '16']
    main(args + ['--out', str(tmp_path / 'all.json')])
    main(args + ['--out', str(tmp_path / 'w2.json'), '--workers', '2'])
    whole = (tmp_path / 'all.json').read_bytes()
    assert len(whole) > 10000 and (tmp_path / 'w2.json').read_bytes() == whole
    shards = [str(tmp_path / f'shard{i}.json') for i in range(3)]
    for i, out in enumerate(shards):
        main(args + ['--out', out, '--shard', f'{i}/3'])
    ids = sorted(im['id'] for im in json.load(open(load / 'annotations.json'))['images'])
    assert merged(shards, {i: k for k, i in enumerate(ids)}) == whole
    # the merge of docs/benchmarks.md: columns, a stable sort by image id, written again
    img, cat, box, score = (np.concatenate(c) for c in zip(*map(cr.read_results_columns,
                                                                 shards)))
    order = np.argsort(img, kind='stable')
    cr.write_results_json(str(tmp_path / 'merged.json'), img[order], cat[order], box[order],
                          score[order])
    assert (tmp_path / 'merged.json').read_bytes() == whole
    assert all(0 < os.path.getsize(s) < len(whole) for s in shards)


def test_shard_and_workers_mistakes_are_one_line():
    main = load_tool('fuse_results').main
    base = ['--ann', ANN, '--preds', *PREDS]
    for extra, msg in ((['--shard', '3/3', '--no-eval'], "--shard must be I/N with 0 <= I < N"),
                       (['--shard', 'a/2', '--no-eval'], "got 'a/2'"),
                       (['--shard', '0/2'], '--shard fuses a part of the images'),
                       (['--workers', '0'], '--workers must be at least 1'),
                       (['--workers', '2', '--device', 'cuda'], 'on cpu only')):
        with pytest.raises(ValueError, match=re.escape(msg)):
            main(base + extra)


@pytest.mark.parametrize('script, args, tool', [
    ('tools/slurm_train.sh', ['part', 'job', 'cfg.py', 'work'],
     ['tools/train.py', 'cfg.py', '--work-dir=work', '--launcher=slurm']),
    ('tools/slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth'],
     ['tools/test.py', 'cfg.py', 'ckpt.pth', '--launcher=slurm']),
    ('tools/slurm_test.sh', ['part', 'job', 'cfg.py', 'none'],
     ['tools/test.py', 'cfg.py', '--launcher=slurm'])])
def test_slurm_scripts_pass_their_arguments_to_srun(tmp_path, script, args, tool):
    assert subprocess.run(['bash', '-n', script], cwd=ROOT).returncode == 0
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'  # a stub: one argument per line
    srun.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {tmp_path}/argv\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', GPUS='4',
               SRUN_ARGS='--quotatype=auto --exclusive')
    proc = subprocess.run(['bash', script, *args, '--cfg-options', 'a=1 b'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / 'argv').read_text().splitlines()
    assert argv[:2] == ['-p', 'part'] and '--job-name=job' in argv
    assert '--ntasks=4' in argv and '--gres=gpu:4' in argv
    assert '--quotatype=auto' in argv and '--exclusive' in argv
    start = next(i for i, a in enumerate(argv) if a.endswith(tool[0]))
    assert argv[start + 1:] == tool[1:] + ['--cfg-options', 'a=1 b']
    assert argv[start - 1] == '-u' and argv[start].startswith(ROOT)
