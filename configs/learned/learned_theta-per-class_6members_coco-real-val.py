# The seed's learned ensembling: one Θ row per class [K, N], A = ŶᵀΘ
# (masked, renormalised), J = J_reg + J_cons + J_cls (docs/theory.md §4): the global-Θ
# config with theta_mode='per_class'.
#   python tools/train.py configs/learned/learned_theta-per-class_6members_coco-real-val.py
_base_ = './learned_theta-global_6members_coco-real-val.py'

model = dict(head=dict(theta_mode='per_class'))
