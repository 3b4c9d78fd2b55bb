# e2e-CEL's accuracy mode: each image fuses the k = 3 members its selection net scores
# highest (perturbed top-k), the net reading the meta-features of every member's
# predictions (box counts, scores, agreement). Every member runs on every image, so its
# cost is all six members (0.70 s per image) plus the net. Otherwise as the default config:
#   python tools/train.py configs/cel/cel_k3_6members_coco-real-val.py --work-dir work_dirs/cel_k3
_base_ = './cel_budget-0.4s_6members_coco-real-val.py'

model = dict(probes=None, selection_net=dict(use_meta=True),
             selector=dict(_delete_=True, k=3))
