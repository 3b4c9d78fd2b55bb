# The recommended learned fusion (first config of configs/learned/): WBF whose member weights
# are learned (BCE of the cluster confidence on match / no-match), instead of grid-searched.
# Trains on the embedded val split:
#   python tools/train.py configs/learned/learned-weights_6members_coco-real-val.py \
#       --work-dir work_dirs/learned-weights
_base_ = [
    '../_base_/models/ensemble_coco-real.py', '../_base_/schedules/ensemble_full-batch.py',
    '../_base_/default_runtime.py'
]

# The head is the base model's LearnedWeightsHead. A convex fit: one full-batch L-BFGS step
# of up to 200 iterations on the whole training split (under a second).
train_cfg = dict(steps=1)
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='LBFGS', lr=1.0, max_iter=200, line_search_fn='strong_wolfe'))
param_scheduler = []
