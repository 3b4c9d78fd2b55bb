# The recommended e2e-CEL cascade (cel_budget-0.4s_6members_coco-real-val.py) under a budget
# of 0.2 s per image, probe and selection net included: with the 0.0036 s probe, one of the
# four 0.17 s members fits, with the other 0.0036 s YOLO.
#   python tools/train.py configs/cel/cel_small-budget-0.2s_6members_coco-real-val.py \
#       --work-dir work_dirs/cel_0.2s
_base_ = './cel_budget-0.4s_6members_coco-real-val.py'

model = dict(selector=dict(budget=0.2))
