_base_ = 'mmdet::_base_/default_runtime.py'

# mmens' registry nodes (mmens/registry.py) build every module of a config: an mmens name
# resolves there, an mmdet or mmengine name (CocoDataset, CheckpointHook) through their
# parents, and mmens' modules are imported on first use (no custom_imports needed).
default_scope = 'mmens'
# the Runner that loads and resumes checkpoints with torch.load(weights_only=True) and
# mmens' allow-list, and saves them so that they load so
runner_type = 'EnsembleRunner'

# Works on CPU (gloo) and CUDA, and with fusion rules that have no parameters.
model_wrapper_cfg = dict(type='EnsembleDistributedWrapper')
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=2),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_level = 'INFO'
randomness = dict(seed=0)  # reproducible fits (demo numbers are rerunnable)
