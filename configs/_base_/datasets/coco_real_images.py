# The embedded real COCO val2017 images (data/coco_real/images/val, 80 images) read as raw
# images, for ensembles whose members run live (members=[dict(config=..., checkpoint=...)]).
# Each member applies its own test pipeline and data preprocessor to the raw image, so this
# pipeline only loads it: no resize, no normalisation. The split, annotations and evaluator
# are those of coco_real_cached.py; its cached-prediction dataset is replaced by the images,
# and there is nothing to train on (the members' names and seconds it sets are unused here).
_base_ = './coco_real_cached.py'
dataset_type = 'CocoDataset'

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackEnsembleInputs')
]
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root={{_base_.data_root}},
        ann_file='annotations/val.json',
        data_prefix=dict(img='images/val/'),
        filter_cfg=dict(filter_empty_gt=False),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=None))
test_dataloader = val_dataloader
train_dataloader = None
