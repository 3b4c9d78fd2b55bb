# Training schedule of learned ensembles over cached predictions: 30 epochs, Adam.
# (SGD with lr=alpha on a raw Θ reproduces the seed's update rule Θ ← Θ − α∇J:
#  optim_wrapper = dict(optimizer=dict(type='SGD', lr=alpha, momentum=0)).)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=30, val_interval=30)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=0.01))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=30, by_epoch=True, eta_min=1e-4)]
custom_hooks = [dict(type='ThetaPlotHook')]  # theta.png in the work dir, ΣΘ in the log
