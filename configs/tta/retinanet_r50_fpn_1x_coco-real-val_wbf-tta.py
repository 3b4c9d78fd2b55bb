# One-stage: mmdet's RetinaNet-R50 with its own test-time augmentation (3 scales x horizontal
# flip, mmdet's retinanet_tta.py), the six views merged by WBF instead of DetTTAModel's NMS,
# on the embedded val images:
#   python tools/test.py configs/tta/retinanet_r50_fpn_1x_coco-real-val_wbf-tta.py \
#       https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth --tta
# Without --tta the same command tests the detector alone.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

# the embedded val images (data/coco_real, 80) as the test split, through the detector's own
# pipelines; mmens' scope and Runner (checkpoints loaded with torch.load(weights_only=True)
# and mmens' allow-list)
default_scope = 'mmens'
runner_type = 'EnsembleRunner'
data_root = '{{fileDirname}}/../../data/coco_real/'
test_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/val.json',
        data_prefix=dict(img='images/val/')))
val_dataloader = test_dataloader
test_evaluator = dict(ann_file=data_root + 'annotations/val.json')
val_evaluator = test_evaluator

tta_model = dict(
    _delete_=True,
    type='EnsembleTTAModel',
    fusion=dict(method='wbf', iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    max_per_img=100)
