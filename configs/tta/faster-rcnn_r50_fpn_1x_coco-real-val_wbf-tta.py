# Two-stage: mmdet's Faster R-CNN-R50 with test-time augmentation (2 scales x horizontal
# flip), the four views merged by WBF instead of DetTTAModel's NMS, on the embedded val images:
#   python tools/test.py configs/tta/faster-rcnn_r50_fpn_1x_coco-real-val_wbf-tta.py \
#       https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth --tta
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

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
    type='EnsembleTTAModel',
    fusion=dict(method='wbf', iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    max_per_img=100)
img_scales = [(1333, 800), (666, 400)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=s, keep_ratio=True) for s in img_scales],
            [dict(type='RandomFlip', prob=1.),
             dict(type='RandomFlip', prob=0.)],
            [dict(type='LoadAnnotations', with_bbox=True)],
            [dict(type='PackDetInputs',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                             'scale_factor', 'flip', 'flip_direction'))],
        ])
]
