# Cached member predictions on the embedded real COCO data (data/coco_real, see its README).
# `val` (COCO val2017 images, unseen by the members) is where ensembles learn and are scored
# by k-fold cross-validation; `train` (COCO train2017 images, seen by the members) is for
# smoke tests only.
dataset_type = 'CocoEnsembleDataset'
data_root = '{{fileDirname}}/../../../data/coco_real/'
members = [
    'centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
    'yolofastestv2-352', 'yolofastestv2-352-hflip'
]
# each member's measured seconds per image (data/coco_real/members.json; e2e-CEL budgets)
member_seconds = [0.17015, 0.16831, 0.17264, 0.1773, 0.00357, 0.00357]
backend_args = None

train_pipeline = [
    dict(type='LoadMemberPredictions'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackEnsembleInputs')
]
test_pipeline = [
    dict(type='LoadMemberPredictions'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackEnsembleInputs')
]
val_split = dict(
    type=dataset_type,
    data_root=data_root,
    ann_file='annotations/val.json',
    data_prefix=dict(img='images/val/'),
    members=members,
    pred_prefix='predictions/val',
    members_meta='members.json',
    filter_cfg=dict(filter_empty_gt=False),
    backend_args=backend_args)

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(**val_split, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**val_split, test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='SubsetCocoMetric',
    ann_file=data_root + 'annotations/val.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
