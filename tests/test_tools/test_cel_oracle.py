"""cel_oracle: the AP of a per-image choice among result sets equals pycocotools' AP of the
images' results put together, and the oracles never fall below where they start."""
import contextlib
import io
import json
import os.path as osp

import numpy as np
import pytest
from conftest import ROOT, load_tool
from pycocotools.coco import COCO

from mmens.evaluation.coco_eval import CocoEvaluation

cel_oracle = load_tool('cel_oracle')  # tools/analysis_tools/cel_oracle.py
DATA = osp.join(ROOT, 'data', 'coco_real')
MEMBERS = ['centernet-512', 'nanodet-416', 'yolofastestv2-352']


@pytest.fixture(scope='module')
def setup():
    """Three members' own results on 16 val images, and the ground truth with, as a fourth
    result set, every ground-truth box at score 1 (AP 1)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(osp.join(DATA, 'annotations', 'val.json'))
    img_ids = sorted(coco.getImgIds())[:16]
    keep = set(img_ids)
    sets = []
    for name in MEMBERS:
        with open(osp.join(DATA, 'predictions', 'val', f'{name}.json'), encoding='utf-8') as f:
            sets.append([r for r in json.load(f) if r['image_id'] in keep])
    sets.append([dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'],
                      score=1.0) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_ids))
                 if not a.get('iscrowd', 0)])
    return coco, img_ids, sets, cel_oracle.SubsetTables(coco, sets, img_ids)


def _put_together(sets, img_ids, choice):
    return [r for i, c in zip(img_ids, choice) for r in sets[c] if r['image_id'] == i]


def test_ap_of_a_choice_is_pycocotools_ap(setup):
    coco, img_ids, sets, tables = setup
    rng = np.random.default_rng(0)
    choices = rng.integers(0, 3, size=(2, len(img_ids)))  # [R, I] among the members
    aps = tables.ap(choices)
    for choice, ap in zip(choices, aps):
        ref = CocoEvaluation(coco, _put_together(sets, img_ids, choice), img_ids).metrics()
        assert ap == pytest.approx(ref['AP'], abs=1e-12)
    part = np.arange(0, 16, 3)  # a subset of the images, as a fold
    for s in range(3):
        ref = CocoEvaluation(coco, sets[s], img_ids, ap_only=True).ap(part)
        assert tables.fixed_ap([s], part)[0] == pytest.approx(ref, abs=1e-12)
    assert tables.fixed_ap([3], np.arange(16))[0] == pytest.approx(1.0)


def test_oracles(setup):
    _, img_ids, _, tables = setup
    per = tables.per_image_ap()  # [S, I]
    cols = np.arange(len(img_ids))
    assert per.shape == (4, 16) and np.allclose(per[3], 1.0)
    start = np.zeros(16, dtype=np.int64)
    among = [0, 1, 2]
    po = cel_oracle.per_image_oracle(per, among, start)
    assert np.all(per[po, cols] == per[among].max(0))  # the best of each image ...
    assert np.all(po[per[among].max(0) == per[0]] == 0)  # ... moved only where it gains
    go = cel_oracle.greedy_oracle(tables, among, start)
    assert tables.ap(go)[0] >= max(tables.ap(start)[0], tables.fixed_ap(among, cols).max())
    assert set(go.tolist()) <= set(among)
    # with the ground truth among the choices, both oracles take it everywhere
    assert np.all(cel_oracle.per_image_oracle(per, [0, 3], start)[per[0] < per[3]] == 3)
    assert tables.ap(cel_oracle.greedy_oracle(tables, [0, 1, 2, 3], start))[0] == \
        pytest.approx(1.0)
