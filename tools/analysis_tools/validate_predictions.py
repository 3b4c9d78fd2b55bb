"""Check COCO-results files (any framework's) against an annotation file.

    python tools/analysis_tools/validate_predictions.py --ann GT.json --preds A.json B.json [--repair --out-dir DIR]

Each file is checked for: valid JSON list, the four fields, finite boxes with positive size,
scores in [0, 1], known image and category ids. Errors name the file, entry index, image id
and field. With ``--repair`` the repairable problems are repaired (scores clipped, invalid
entries dropped, boxes clipped to the image), the counts are printed, and with ``--out-dir``
the repaired files are written there under the same names.
"""
import argparse
import json
import os
import os.path as osp

from mmens.apis.member_files import load_coco, member_results
from mmens.datasets.coco_results import load_member_predictions
from mmens.utils import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='validate COCO-results prediction files')
    p.add_argument('--ann', required=True, help='COCO annotation file')
    p.add_argument('--preds', nargs='+', required=True, help='COCO-results JSON files')
    p.add_argument('--repair', action='store_true', help='repair instead of failing')
    p.add_argument('--out-dir', help='with --repair: write the repaired files here')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.out_dir and not args.repair:
        raise ValueError('--out-dir writes repaired files: use it with --repair')
    coco = load_coco(args.ann)
    sizes = {im['id']: (im['width'], im['height']) for im in coco.loadImgs(coco.getImgIds())}
    cat_ids = coco.getCatIds()
    for path in args.preds:
        preds = load_member_predictions(path, sizes, cat_ids, repair=args.repair)
        n_img = len(set(preds.image_ids.tolist()))
        print(f"{path}: valid, {len(preds)} boxes on {n_img} of {len(sizes)} images"
              + (f'; repaired {preds.report}' if preds.report else ''))
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            out = osp.join(args.out_dir, osp.basename(path))
            with open(out, 'w', encoding='utf-8') as f:
                json.dump(member_results(preds), f)
            print(f'  wrote {out}')


if __name__ == '__main__':
    run_cli(main)
