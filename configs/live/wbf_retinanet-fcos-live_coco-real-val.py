# WBF of two mmdet model-zoo detectors run live on the raw images (each member with its own
# test pipeline and data preprocessor, frozen, in eval mode, not saved with the ensemble),
# plus each one on the horizontally flipped image:
#   python tools/test.py configs/live/wbf_retinanet-fcos-live_coco-real-val.py
# The checkpoints are downloaded from the mmdet model zoo on first use. Members too large to
# co-host, or on other devices, go through files instead: tools/analysis_tools/dump_predictions.py per
# member, then tools/analysis_tools/fuse_results.py or a cached-prediction config (configs/wbf/).
_base_ = ['../_base_/datasets/coco_real_images.py', '../_base_/default_runtime.py']

zoo = 'https://download.openmmlab.com/mmdetection/v2.0/'
retinanet = dict(
    config='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    checkpoint=zoo + 'retinanet/retinanet_r50_fpn_1x_coco/'
    'retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth')
fcos = dict(
    config='mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    checkpoint=zoo + 'fcos/fcos_r50_caffe_fpn_gn-head_1x_coco/'
    'fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth')
model = dict(
    type='FusionDetector',
    members=[
        dict(retinanet, name='retinanet'),
        dict(retinanet, name='retinanet-hflip', flip=True),
        dict(fcos, name='fcos'),
        dict(fcos, name='fcos-hflip', flip=True),
    ],
    method='wbf',
    fusion_cfg=dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    test_cfg=dict(max_per_img=100))
train_dataloader = None
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
