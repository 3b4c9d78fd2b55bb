# Training schedule of learned ensembles over cached predictions: the clusters of the whole
# training split are matched once, then 300 full-batch Adam steps (FullBatchTrainLoop).
# (SGD with lr=alpha on a raw Θ reproduces the seed's update rule Θ ← Θ − α∇J:
#  optim_wrapper = dict(optimizer=dict(type='SGD', lr=alpha, momentum=0)).)
# (a resumable checkpoint every 100 steps and at Ctrl-C: an interrupted fit goes on with
#  tools/train.py CONFIG --resume)
train_cfg = dict(type='FullBatchTrainLoop', steps=300, val_interval=1, checkpoint_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=0.02))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=300, by_epoch=False, eta_min=2e-4)]
custom_hooks = [dict(type='ThetaPlotHook')]  # theta.png in the work dir, ΣΘ in the log
