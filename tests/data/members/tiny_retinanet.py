# mmdet's own RetinaNet-R18 config, shrunk for CPU tests (random weights; no download).
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
model = dict(
    backbone=dict(init_cfg=None),
    neck=dict(out_channels=32),
    bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1))
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
