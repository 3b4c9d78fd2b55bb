# Gaussian soft-NMS over the pooled member boxes (ensemble-boxes soft_nms) of the 6 embedded members:
#   python tools/test.py configs/wbf/soft_nms_6members_coco-real-val.py
_base_ = ['../_base_/datasets/coco_real_cached.py', '../_base_/default_runtime.py']

model = dict(
    type='FusionDetector',
    members={{_base_.members}},
    method='soft_nms',
    fusion_cfg=dict(iou_thr=0.5, sigma=0.5, thresh=0.001, method=2),
    test_cfg=dict(max_per_img=100))
train_dataloader = None  # a fixed rule: nothing to train
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
