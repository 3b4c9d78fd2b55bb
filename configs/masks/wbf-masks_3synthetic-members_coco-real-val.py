# WBF of three instance-segmentation members with fused masks (MaskFusionDetector), scored
# with bbox and segm AP by mmdet's CocoMetric on the embedded val images:
#   python tools/test.py configs/masks/wbf-masks_3synthetic-members_coco-real-val.py
# The members are synthetic noisy copies of the ground-truth masks (data/synthetic_masks).
_base_ = ['../_base_/datasets/coco_real_cached.py', '../_base_/default_runtime.py']

members = ['shifted', 'dilated', 'eroded']
mask_pipeline = [
    dict(type='LoadMemberPredictions'),
    dict(type='LoadAnnotations', with_bbox=True),
    # the image's member masks go to the detector through the sample's metainfo
    dict(type='PackEnsembleInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                               'img_shape', 'scale_factor', 'member_masks'))
]
mask_split = dict(
    members=members,
    pred_prefix='../synthetic_masks/val',
    members_meta=None,
    with_masks=True,
    test_mode=True,
    pipeline=mask_pipeline)
model = dict(
    type='MaskFusionDetector',
    members=members,
    fusion_cfg=dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    mask_thr=0.5,
    test_cfg=dict(max_per_img=100))
train_dataloader = None  # a fixed rule: nothing to train
val_dataloader = dict(dataset=mask_split)
test_dataloader = dict(dataset=mask_split)
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = dict(metric=['bbox', 'segm'])
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
