# Θ on the WBF form (docs/theory.md §2): WBF with member weights Θ in the fused box
# Σθ s b / Σθ s and in the conf_type score, trained with the seed's J = J_reg + J_cons + J_cls
# (J_cls: BCE of the fused score) plus λ/2 ‖log Θ − log Θ0‖² toward the anchor weights Θ0.
# The matching uses Θ0 in training and at test time. Θ0 are the learned WBF weights of the
# same training images (tools/analysis_tools/theta_wbf.py passes them, with λ chosen by
# inner cross-validation; 0.01 is its most frequent choice); without them Θ0 is equal weights.
# Out of fold it is level with its anchor (docs/experiments.md):
#   python tools/train.py configs/learned/learned_theta-wbf_6members_coco-real-val.py \
#       --cfg-options model.head.anchor_weights="[1.2,1.1,0.9,0.9,0.5,0.4]"
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_full-batch.py',
    '../_base_/default_runtime.py'
]

model = dict(
    head=dict(_delete_=True, type='LearnedFusionHead', num_classes=80, theta_mode='wbf',
              anchor_weights=None, shrink=0.01, conf_type='avg',
              loss_reg=1.0, loss_cons=1.0, loss_cls=1.0))
# N parameters, a smooth objective: one full-batch L-BFGS step of up to 100 iterations
train_cfg = dict(steps=1)
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='LBFGS', lr=1.0, max_iter=100, line_search_fn='strong_wolfe'))
param_scheduler = []
