"""Fit time of learned WBF weights vs grid-searching them, on one fold of the embedded val.

    python tools/analysis_tools/benchmark_fit.py            # learned weights, tied grid (27), full grid (3^6)
    python tools/analysis_tools/benchmark_fit.py --no-full-grid

Times one training fold (64 images): the learned weights through mmengine's Runner exactly
as ``tools/train.py`` (runner start-up included), and the grid search with mmens WBF and
pycocotools AP on the same images. Prints the seconds and the ratios.
"""
import argparse
import os.path as osp
import tempfile

from cross_val import fold_config, train_from_cfg  # helper modules next to this tool
from fusion_baselines import grid_search_wbf, weight_grid
from mmens.apis import load_coco, load_member_batch
from mmens.datasets.ensemble_dataset import fold_image_ids
from mmens.utils import register_all_modules, run_cli

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'data', 'coco_real')
CONFIG = osp.join(ROOT, 'configs', 'learned', 'learned-weights_6members_coco-real-val.py')
MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
           'yolofastestv2-352', 'yolofastestv2-352-hflip']


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='fit time: learned weights vs grid search')
    p.add_argument('--fold', type=int, default=0)
    p.add_argument('--no-full-grid', action='store_true', help='skip the 3^6 grid (~7 min)')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    register_all_modules()  # default scope 'mmens', as the configs'
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{m}.json')
                                     for m in MEMBERS])
    train = fold_image_ids(batch.img_ids, 5, args.fold, 'train', 0)
    with tempfile.TemporaryDirectory() as tmp:
        train_from_cfg(fold_config(CONFIG, tmp + '/warm', dict(num_folds=5, index=args.fold,
                                                              seed=0)))  # warm-up
        model, learned_s = train_from_cfg(fold_config(
            CONFIG, tmp + '/run', dict(num_folds=5, index=args.fold, seed=0)))
    print(f'learned WBF weights (Runner, {len(train)} images): {learned_s:.2f} s  '
          f'weights {[round(w, 2) for w in model.head.member_weights().tolist()]}')
    grids = [('grid, flip variants tied, {1,2,3}^3', weight_grid(batch.names))]
    if not args.no_full_grid:
        grids.append(('grid, untied, {1,2,3}^6', weight_grid(batch.names, tie_flips=False)))
    for name, grid in grids:
        best, sec = grid_search_wbf(batch, coco, train, grid)
        print(f'{name} ({len(grid)} weight vectors): {sec:.1f} s  best {best["weights"]}  '
              f'-> learned fit is {sec / learned_s:.0f}x faster')


if __name__ == '__main__':
    run_cli(main)
