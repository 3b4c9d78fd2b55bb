"""How the default learned fusion's settings were chosen: 5-fold out-of-fold AP on val.

    python tools/analysis_tools/select_learned_weights.py

Runs ``configs/learned/learned-weights_6members_coco-real-val.py`` with the member weights
tied within a detector and its flip variant or not, and with shrinkage power 1 or 0.5, each
cross-validated exactly as in ``make demo``, and prints the out-of-fold COCO AP of each.
"""
import os.path as osp
import tempfile

import mmens  # noqa: F401  (registers the mmens modules)
from mmengine.registry import init_default_scope

from mmens.apis import load_coco, load_member_batch
from mmens.experiments.cross_val import cross_validate, runner_fit_predict
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.utils import run_cli

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
CONFIG = osp.join(ROOT, 'configs', 'learned', 'learned-weights_6members_coco-real-val.py')
MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
           'yolofastestv2-352', 'yolofastestv2-352-hflip']


def main() -> None:
    init_default_scope('mmdet')
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{m}.json')
                                     for m in MEMBERS])
    with tempfile.TemporaryDirectory() as tmp:
        for groups in (None, [0, 0, 1, 1, 2, 2]):
            for power in (1.0, 0.5):
                opts = {'model.head.weight_groups': groups, 'model.head.power': power}
                fp = runner_fit_predict(CONFIG, batch, tmp, cfg_options=opts)
                res, _ = cross_validate(fp, batch.img_ids)
                ap = CocoEvaluation(coco, res, batch.img_ids).metrics()['AP']
                print(f"weights {'tied to flip variant' if groups else 'untied':21s} "
                      f'power {power}: out-of-fold AP {100 * ap:.1f}', flush=True)


if __name__ == '__main__':
    run_cli(main)
