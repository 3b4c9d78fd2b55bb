# Weighted Boxes Fusion (ensemble-boxes semantics, equal weights) of the 6 embedded members,
# scored on the embedded COCO val2017 images:
#   python tools/test.py configs/wbf/wbf_6members_coco-real-val.py
_base_ = ['../_base_/datasets/coco_real_cached.py', '../_base_/default_runtime.py']

model = dict(
    type='FusionDetector',
    members={{_base_.members}},
    method='wbf',
    fusion_cfg=dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    test_cfg=dict(max_per_img=100))
train_dataloader = None  # a fixed rule: nothing to train
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
