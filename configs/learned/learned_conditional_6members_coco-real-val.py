# The recommended learned fusion (first config of configs/learned/): WBF matching with
# learned member weights, then a small conditional net giving each cluster its member
# weights Θ_c and a rescored confidence. Trains on the embedded COCO val2017 split:
#   python tools/train.py configs/learned/learned_conditional_6members_coco-real-val.py \
#       --work-dir work_dirs/learned
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_30e.py',
    '../_base_/default_runtime.py'
]

model = dict(
    head=dict(_delete_=True, type='LearnedFusionHead', num_classes=80, theta_mode='conditional',
        hidden=32, loss_reg=1.0, loss_cons=1.0, loss_cls=1.0))
# Full-batch training on the whole split (clusters matched once): 300 Adam steps.
train_cfg = dict(_delete_=True, type='FullBatchTrainLoop', steps=300, val_interval=1)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=0.02))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=300, by_epoch=False, eta_min=2e-4)]
