# The seed's learned ensembling: one Θ row per class [K, N], A = ŶᵀΘ
# (masked, renormalised), J = J_reg + J_cons + J_cls (docs/theory.md §4).
#   python tools/train.py configs/learned/learned_theta-per-class_6members_coco-real-val.py
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_30e.py',
    '../_base_/default_runtime.py'
]

model = dict(
    head=dict(_delete_=True, type='LearnedFusionHead', num_classes=80, theta_mode='per_class',
        theta_param='softplus', score_mode='seed',
        loss_reg=1.0, loss_cons=1.0, loss_cls=1.0))
# Full-batch training on the whole split (clusters matched once): 300 Adam steps.
train_cfg = dict(_delete_=True, type='FullBatchTrainLoop', steps=300, val_interval=1)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=0.02))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=300, by_epoch=False, eta_min=2e-4)]
