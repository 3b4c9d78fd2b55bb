_base_ = 'mmdet::_base_/default_runtime.py'

default_scope = 'mmdet'
custom_imports = dict(imports=['mmens'], allow_failed_imports=False)

# Works on CPU (gloo) and CUDA, and with fusion rules that have no parameters.
model_wrapper_cfg = dict(type='EnsembleDistributedWrapper')
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_level = 'INFO'
randomness = dict(seed=0)  # reproducible fits (demo numbers are rerunnable)
