# e2e-CEL with unit costs: each image fuses the k = 3 members its selection net scores
# highest (perturbed top-k). Otherwise as the default config:
#   python tools/train.py configs/cel/cel_k3_6members_coco-real-val.py --work-dir work_dirs/cel_k3
_base_ = './cel_budget-0.4s_6members_coco-real-val.py'

model = dict(selector=dict(_delete_=True, k=3))
