"""The compiled AP-only evaluation equals pycocotools' COCOeval, bootstrap resamples included."""
import json
import os.path as osp

import numpy as np
import pytest

from conftest import DATA
from mmens.apis import load_coco
from mmens.evaluation.coco_eval import CocoEvaluation


@pytest.fixture(scope='module')
def val():
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    members = {}
    for name in ('centernet-512', 'nanodet-416-hflip', 'yolofastestv2-352'):
        with open(osp.join(DATA, 'predictions', 'val', f'{name}.json'), encoding='utf-8') as f:
            members[name] = json.load(f)
    return coco, members


def test_ap_only_equals_pycocotools_on_real_members_and_resamples(val):
    coco, members = val
    ids = sorted(coco.getImgIds())
    assert sum(a['iscrowd'] for a in coco.dataset['annotations']) > 0  # crowd boxes matter
    rng = np.random.RandomState(0)
    for name, results in members.items():
        # every detection twice (ties in score, > 100 per image and category for some)
        # and a third of the images only: the cut to 100 and the stable order matter
        for res, img_ids in [(results, ids), (results + results, ids[::3])]:
            full = CocoEvaluation(coco, res, img_ids)
            fast = CocoEvaluation(coco, res, img_ids, ap_only=True)
            n = len(img_ids)
            assert fast.ap(np.arange(n)) == pytest.approx(full.metrics()['AP'], abs=1e-12)
            for _ in range(2):  # pycocotools' accumulate on a multiset of images
                pos = rng.randint(0, n, n)
                assert fast.ap(pos) == pytest.approx(full.metrics(pos)['AP'], abs=1e-12), name


def test_ap_only_on_crowd_overlaps_and_empty_results(val):
    coco, _ = val
    crowd = [a for a in coco.dataset['annotations'] if a['iscrowd']]
    img = crowd[0]['image_id']
    gts = coco.imgToAnns[img]
    x, y, w, h = crowd[0]['bbox']
    # boxes inside the crowd region (matched to it: neither true nor false positives),
    # the image's real boxes, slightly shifted ones and one of another category
    res = [dict(image_id=img, category_id=crowd[0]['category_id'], score=0.9 - 0.1 * k,
                bbox=[x + k, y + k, w / 3, h / 3]) for k in range(4)]
    res += [dict(image_id=img, category_id=a['category_id'], score=0.5,
                 bbox=[a['bbox'][0] + s, a['bbox'][1], a['bbox'][2], a['bbox'][3]])
            for a in gts for s in (0.0, 3.0)]
    res += [dict(image_id=img, category_id=1 if gts[0]['category_id'] != 1 else 2,
                 score=0.95, bbox=gts[0]['bbox'])]
    full = CocoEvaluation(coco, res, [img])
    fast = CocoEvaluation(coco, res, [img], ap_only=True)
    assert 0 < full.metrics()['AP'] < 1
    assert fast.ap(np.arange(1)) == pytest.approx(full.metrics()['AP'], abs=1e-12)
    assert CocoEvaluation(coco, [], [img], ap_only=True).ap(np.arange(1)) == 0.0
    with pytest.raises(ValueError, match='AP only'):
        fast.metrics()


def test_bootstrap_resamples_in_one_compiled_pass_equal_ap_row_by_row(val):
    coco, members = val
    ids = sorted(coco.getImgIds())
    for ap_only in (False, True):
        ev = CocoEvaluation(coco, members['nanodet-416-hflip'], ids, ap_only=ap_only)
        boot = ev.bootstrap_aps(40, seed=3)
        rng = np.random.RandomState(3)
        rows = [ev.ap(rng.randint(0, len(ids), len(ids))) for _ in range(40)]
        assert np.allclose(boot, rows, rtol=0, atol=1e-12)
        assert boot.std() > 0.005  # the resamples differ
