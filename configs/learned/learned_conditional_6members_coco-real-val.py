# Conditional learned fusion: WBF matching, then a small net giving each cluster its own
# member weights Θ_c and a rescored confidence. Trains on the embedded COCO val2017 split:
#   python tools/train.py configs/learned/learned_conditional_6members_coco-real-val.py \
#       --work-dir work_dirs/learned
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_full-batch.py',
    '../_base_/default_runtime.py'
]

model = dict(
    head=dict(_delete_=True, type='LearnedFusionHead', num_classes=80, theta_mode='conditional',
        hidden=32, loss_reg=1.0, loss_cons=1.0, loss_cls=1.0))
