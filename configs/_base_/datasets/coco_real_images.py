# The embedded real COCO val2017 images (data/coco_real/images/val, 80 images) read as raw
# images, for ensembles whose members run live (members=[dict(config=..., checkpoint=...)]).
# Each member applies its own test pipeline and data preprocessor to the raw image, so this
# pipeline only loads it: no resize, no normalisation.
dataset_type = 'CocoDataset'
data_root = '{{fileDirname}}/../../../data/coco_real/'
backend_args = None

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackEnsembleInputs')
]
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/val.json',
        data_prefix=dict(img='images/val/'),
        filter_cfg=dict(filter_empty_gt=False),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='SubsetCocoMetric',
    ann_file=data_root + 'annotations/val.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
