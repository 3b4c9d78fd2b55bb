"""mmens.evaluation.ap_switch_deltas: AP with one image switched, against pycocotools."""
import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from mmens.evaluation.ap_deltas import ap_switch_deltas
from mmens.evaluation.coco_eval import CocoEvaluation


def synthetic_coco(num_images=7, num_cats=3, seed=0):
    """Ground truth with crowd boxes, and three result lists of different quality (scores
    rounded to 0.1: ties across images, which must sort as in pycocotools)."""
    rng = np.random.RandomState(seed)
    images = [dict(id=i + 1, width=100, height=100) for i in range(num_images)]
    anns = []
    for i in range(num_images - 1):  # the last image has no ground truth
        for _ in range(rng.randint(1, 5)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            anns.append(dict(id=len(anns) + 1, image_id=i + 1,
                             category_id=int(rng.randint(1, num_cats + 1)),
                             bbox=[x, y, w, h], area=w * h, iscrowd=int(rng.rand() < 0.1)))
    coco = COCO()
    coco.dataset = dict(images=images, annotations=anns,
                        categories=[dict(id=c + 1, name=str(c)) for c in range(num_cats)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    outputs = []
    for jitter in (1.0, 4.0, 10.0):
        res = []
        for a in anns:
            if rng.rand() < 0.2:
                continue  # a miss
            x, y, w, h = a['bbox']
            res.append(dict(image_id=a['image_id'], category_id=a['category_id'],
                            bbox=[x + rng.randn() * jitter, y + rng.randn() * jitter, w, h],
                            score=round(float(rng.rand()), 1)))
        for i in range(num_images):  # false positives, some in the image without gt
            for _ in range(rng.randint(0, 3)):
                res.append(dict(image_id=i + 1, category_id=int(rng.randint(1, num_cats + 1)),
                                bbox=list(rng.uniform(0, 50, 2)) + [20.0, 20.0],
                                score=round(float(rng.rand()), 1)))
        outputs.append(res)
    return coco, outputs


def test_each_entry_is_the_ap_change_of_switching_that_image():
    coco, outputs = synthetic_coco()
    img_ids = sorted(coco.getImgIds())
    evals = [CocoEvaluation(coco, res, img_ids) for res in outputs]
    positions = np.array([0, 2, 3, 4, 5, 6])  # image 1 left out of the AP
    reference = np.array([0, 1, 2, 0, 1, 2])
    table = ap_switch_deltas(evals, reference, positions)
    assert table.shape == (3, len(positions))

    def ap(choice):
        res = [r for p, c in zip(positions, choice) for r in outputs[c]
               if r['image_id'] == img_ids[p]]
        return CocoEvaluation(coco, res, [img_ids[p] for p in positions]).metrics()['AP']

    base = ap(reference)
    for p in range(len(positions)):
        for s in range(3):
            choice = reference.copy()
            choice[p] = s
            assert table[s, p] == pytest.approx(ap(choice) - base, abs=1e-12), (s, p)
    assert (table[reference, np.arange(len(positions))] == 0).all()
    assert np.abs(table).max() > 1e-3  # the outputs differ
    # the empty output: switching an image to no detections
    with_empty = evals + [CocoEvaluation(coco, [], img_ids)]
    table = ap_switch_deltas(with_empty, reference, positions)
    choice = reference.copy()
    choice[1] = 3
    res = [r for p, c in zip(positions, choice) if c < 3 for r in outputs[c]
           if r['image_id'] == img_ids[p]]
    drop = CocoEvaluation(coco, res, [img_ids[p] for p in positions]).metrics()['AP'] - base
    assert table[3, 1] == pytest.approx(drop, abs=1e-12)


def test_bad_arguments():
    coco, outputs = synthetic_coco()
    img_ids = sorted(coco.getImgIds())
    evals = [CocoEvaluation(coco, res, img_ids) for res in outputs]
    with pytest.raises(ValueError, match='no evaluation'):
        ap_switch_deltas([], np.zeros(7, dtype=int))
    with pytest.raises(ValueError, match='same img_ids'):
        ap_switch_deltas([evals[0], CocoEvaluation(coco, outputs[1], img_ids[:3])],
                         np.zeros(7, dtype=int))
    with pytest.raises(ValueError, match='shape'):
        ap_switch_deltas(evals, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match='distinct'):
        ap_switch_deltas(evals, np.zeros(2, dtype=int), np.array([1, 1]))
    with pytest.raises(ValueError, match='0..2'):
        ap_switch_deltas(evals, np.full(7, 3))
