"""MaskFusionDetector through the Runner: CocoMetric's segm AP of the fused masks is the
one fuse_results computes from the same member files."""
import os.path as osp

import pytest
import torch

from conftest import DATA, ROOT

CONFIG = osp.join(ROOT, 'configs', 'masks', 'wbf-masks_3synthetic-members_coco-real-val.py')
MASKS = osp.join(ROOT, 'data', 'synthetic_masks', 'val')
IMAGES = 12
TINY_MASK_RCNN = osp.join(ROOT, 'tests', 'data', 'members', 'tiny_mask_rcnn.py')


def first_val_image():
    """The first embedded val image (BGR array) and the live-member batch of it."""
    import mmcv
    img = mmcv.imread(osp.join(DATA, 'images', 'val', sorted(
        __import__('os').listdir(osp.join(DATA, 'images', 'val')))[0]))
    h, w = img.shape[:2]
    return img, dict(img=[torch.from_numpy(img).permute(2, 0, 1)],
                     image_sizes=torch.tensor([[float(w), float(h)]]))


def test_runner_segm_ap_equals_the_file_tool(tmp_path):
    from mmengine.config import Config

    from mmens.apis.fixed_ensemble import build_fixed_ensemble
    from mmens.apis.mask_fusion import fuse_packed_masks, load_batch_masks, mask_results
    from mmens.apis.member_files import load_coco, load_member_batch, select_images
    from mmens.evaluation.coco_eval import results_to_arrays
    from mmens.evaluation.segm_eval import coco_segm_metrics
    from mmens.registry import RUNNERS
    ann = osp.join(DATA, 'annotations', 'val.json')
    coco = load_coco(ann)
    img_ids = sorted(coco.getImgIds())[:IMAGES]
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({'work_dir': str(tmp_path), 'test_dataloader.dataset.img_ids': img_ids,
                         'test_dataloader.batch_size': 5})
    metrics = RUNNERS.build(cfg).test()
    files = [osp.join(MASKS, f'{n}.json') for n in cfg.members]
    batch = load_member_batch(coco, files)  # the file tool's path, on the same images
    model = build_fixed_ensemble(batch.names, 'wbf')
    idx = torch.nonzero(batch.packed['images'] < IMAGES).flatten()
    fused, rles = fuse_packed_masks(model, select_images(batch.packed, 0, IMAGES),
                                    load_batch_masks(batch, files).select(idx))
    arrays = results_to_arrays(*fused, batch.img_ids, batch.cat_ids)
    want = coco_segm_metrics(coco, mask_results(arrays, rles), img_ids=img_ids)['AP']
    assert metrics['coco/segm_mAP'] == pytest.approx(want, abs=6e-4)  # CocoMetric: 3 digits
    assert metrics['coco/segm_mAP'] > 0.5


def test_masks_missing_from_the_batch_are_one_error():
    from mmens.registry import MODELS
    from mmengine.registry import DefaultScope
    from mmdet.structures import DetDataSample
    with DefaultScope.overwrite_default_scope('mmens'):
        model = MODELS.build(dict(type='MaskFusionDetector', members=['a', 'b']))
        with pytest.raises(ValueError, match='mask_thr must be in'):
            MODELS.build(dict(type='MaskFusionDetector', members=['a'], mask_thr=0))
    inputs = dict(bboxes=torch.tensor([[0., 0., 4., 4.]]), scores=torch.ones(1),
                  labels=torch.zeros(1, dtype=torch.long),
                  members=torch.zeros(1, dtype=torch.long),
                  images=torch.zeros(1, dtype=torch.long), image_sizes=torch.tensor([[8., 8.]]))
    with pytest.raises(ValueError, match='the batch carries no member masks'):
        model.predict(inputs, [DetDataSample()])


def test_live_instance_segmentation_members_identical_masks_come_back(tmp_path):
    """Two live copies of one tiny Mask R-CNN (random weights): every fused detection is a
    detection of the member, with its mask."""
    from mmens.ops.masks import runs_to_counts, rle_encode_counts
    from mmens.registry import MODELS
    from mmengine.registry import DefaultScope
    from mmdet.structures import DetDataSample
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmens'):
        model = MODELS.build(dict(type='MaskFusionDetector', members=[
            dict(name=n, config=TINY_MASK_RCNN, checkpoint=None) for n in ('a', 'b')]))
    img, inputs = first_val_image()
    h, w = img.shape[:2]
    pred = model.predict(inputs, [DetDataSample()])[0].pred_instances
    member = model.live_members.predict_member(0, [img])[0]
    assert 0 < len(pred) <= len(member['scores'])
    counts, offsets = runs_to_counts(member['masks'], torch.full((len(member['scores']),),
                                                                 h * w))
    texts = rle_encode_counts(counts.numpy(), offsets.numpy())
    boxes = member['bboxes']
    for box, rle in zip(pred.bboxes, pred.masks):
        j = int(torch.argmin((boxes - box).abs().sum(1)))  # the member's box it fused
        assert torch.allclose(boxes[j], box, atol=1e-3)
        assert rle['size'] == [h, w] and rle['counts'] == texts[j].decode()


def test_a_boxes_only_detector_says_once_per_member_that_it_leaves_masks(tmp_path,
                                                                          monkeypatch):
    """Live Mask R-CNN members under FusionDetector: their masks are not packed (no
    run-length conversion for nothing), and one warning per member says so."""
    from mmdet.structures import DetDataSample
    from mmengine.registry import DefaultScope

    import mmens.models.live_members as live_members
    from mmens.registry import MODELS
    members = [dict(name=n, config=TINY_MASK_RCNN, checkpoint=None) for n in ('a', 'b')]
    with DefaultScope.overwrite_default_scope('mmens'):
        torch.manual_seed(0)
        boxes_only = MODELS.build(dict(type='FusionDetector', members=members))
        torch.manual_seed(0)
        with_masks = MODELS.build(dict(type='MaskFusionDetector', members=members))
    said = []
    monkeypatch.setattr(live_members, 'print_log', lambda msg, **kw: said.append(msg))
    _, inputs = first_val_image()
    packed = boxes_only.with_member_predictions(inputs)
    assert 'masks' not in packed and len(packed['scores']) > 0
    boxes_only.predict(inputs, [DetDataSample()])  # a second batch: no second warning
    assert said == [f'member {n} predicts instance masks, which FusionDetector does not '
                    'fuse (boxes only): MaskFusionDetector fuses them' for n in 'ab']
    want = with_masks.predict(inputs, [DetDataSample()])[0].pred_instances
    got = boxes_only.predict(inputs, [DetDataSample()])[0].pred_instances
    assert 'masks' in with_masks.with_member_predictions(inputs) and 'masks' not in got
    torch.testing.assert_close(got.bboxes, want.bboxes)
    torch.testing.assert_close(got.scores, want.scores)
