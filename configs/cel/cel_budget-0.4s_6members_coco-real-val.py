# The recommended e2e-CEL config (first of configs/cel/): a cascade under a budget of 0.4 s
# per image (seconds from data/coco_real/members.json; all six members cost 0.70 s). The
# probe yolofastestv2-352 (0.0036 s) runs on every image; a selection net reads its
# detections (counts, scores, box sizes and positions, class histogram) and the image size,
# and a perturbed knapsack picks the members to run and fuse within 0.4 s less the probe
# and the net's own measured time (model.selection_seconds); WBF fuses the chosen members.
# The members not chosen never run, and each image's reported cost counts the probe, the
# chosen members and the net.
# Every other setting is the code default (PerturbedSelector, CEL_TRAIN_DEFAULTS): before
# the first step the selection net starts at the best fixed subset of the training images
# by COCO AP, then follows each image's expected loss over perturbed selections.
#   python tools/train.py configs/cel/cel_budget-0.4s_6members_coco-real-val.py \
#       --work-dir work_dirs/cel
_base_ = ['../_base_/datasets/coco_real_cached.py', '../_base_/default_runtime.py']

model = dict(
    type='CELDetector',
    members={{_base_.members}},
    member_seconds={{_base_.member_seconds}},
    probes=['yolofastestv2-352'],
    selection_net=dict(type='MemberSelectionNet', hidden=32),
    selector=dict(budget=0.4),
    fusion_cfg=dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
    test_cfg=dict(max_per_img=100))
# Clusters and targets do not depend on the selection: they are computed once over the
# training split, then 200 Adam steps on the Monte Carlo gradient; a resumable checkpoint
# every 50 steps (and at Ctrl-C), so that an interrupted fit goes on with --resume.
train_cfg = dict(type='FullBatchTrainLoop', steps=200, val_interval=1, checkpoint_interval=50)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=0.01))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=200, by_epoch=False, eta_min=1e-4)]
# Gives the model the COCO AP by which its warm start (train_cfg.warm_start) picks the best
# fixed subset of the training images (models do not import the evaluation layer).
custom_hooks = [dict(type='CELWarmStartHook')]
