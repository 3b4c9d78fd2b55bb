# Non-maximum weighted fusion (ensemble-boxes non_maximum_weighted) of the 6 embedded members:
#   python tools/test.py configs/wbf/nmw_6members_coco-real-val.py
_base_ = ['../_base_/datasets/coco_real_cached.py', '../_base_/default_runtime.py']

model = dict(
    type='FusionDetector',
    members={{_base_.members}},
    method='nmw',
    fusion_cfg=dict(iou_thr=0.55, skip_box_thr=0.0),
    test_cfg=dict(max_per_img=100))
train_dataloader = None  # a fixed rule: nothing to train
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
