# The seed's learned ensembling: one Θ row per class [K, N], A = ŶᵀΘ
# (masked, renormalised), J = J_reg + J_cons + J_cls (docs/theory.md §4).
#   python tools/train.py configs/learned/learned_theta-per-class_6members_coco-real-val.py
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_full-batch.py',
    '../_base_/default_runtime.py'
]

model = dict(
    head=dict(_delete_=True, type='LearnedFusionHead', num_classes=80, theta_mode='per_class',
        theta_param='softplus', score_mode='seed',
        loss_reg=1.0, loss_cons=1.0, loss_cls=1.0))
