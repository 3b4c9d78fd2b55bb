# A learned ensemble over the cached predictions of the embedded members: WBF matching into
# clusters Ŷ, then a head (set by each config), trained with targets at IoU 0.5.
_base_ = '../datasets/coco_real_cached.py'

model = dict(
    type='EnsembleDetector',
    members={{_base_.members}},
    matching=dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    head=dict(type='LearnedWeightsHead'),
    train_cfg=dict(iou_thr=0.5),
    test_cfg=dict(max_per_img=100))
