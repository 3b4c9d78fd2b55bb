"""Check COCO-results files (any framework's) against an annotation file.

    python tools/analysis_tools/validate_predictions.py --ann GT.json --preds A.json B.json [--repair --out-dir DIR]

Each file is checked for: valid JSON list, the four fields, finite boxes with positive size,
scores in [0, 1], known image and category ids, and, in a file with ``segmentation``, a
well-formed mask (RLE or polygons) of its image's size in every entry. Errors name the
file, entry index, image id and field. With ``--repair`` the repairable problems are
repaired (scores clipped, invalid entries dropped, boxes clipped to the image), the counts
are printed, and with ``--out-dir`` the repaired files are written there under the same
names.
"""
import argparse
import json
import os
import os.path as osp

# torch, numpy, pycocotools, msgspec: no OpenMMLab package (nothing here needs a model)
from mmens.apis.member_files import load_coco, member_results
from mmens.datasets.coco_masks import file_has_masks, read_member_masks
from mmens.datasets.coco_results import load_member_predictions
from mmens.utils.cli import run_cli
from mmens.utils.paths import check_member_files, check_output_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='validate COCO-results prediction files')
    p.add_argument('--ann', required=True, help='COCO annotation file')
    p.add_argument('--preds', nargs='+', required=True, help='COCO-results JSON files')
    p.add_argument('--repair', action='store_true', help='repair instead of failing')
    p.add_argument('--out-dir', help='with --repair: write the repaired files here')
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The command line's mistakes, each one line, before any file is read."""
    check_member_files(args.ann, args.preds)
    if not args.out_dir:
        return
    if not args.repair:
        raise ValueError('--out-dir writes repaired files: use it with --repair')
    check_output_dir(args.out_dir, '--out-dir')
    names = [osp.basename(p) for p in args.preds]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        raise ValueError(f'--out-dir {args.out_dir} would get several files named {same}')
    inputs = [p for p in args.preds if osp.realpath(osp.dirname(osp.abspath(p))) ==
              osp.realpath(args.out_dir)]
    if inputs:
        raise ValueError(f'--out-dir {args.out_dir} holds the files to repair ({inputs[0]}): '
                         'the repaired files would overwrite them')


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    coco = load_coco(args.ann, annotations=False)  # the images and categories suffice
    sizes = {im['id']: (im['width'], im['height']) for im in coco.loadImgs(coco.getImgIds())}
    cat_ids = coco.getCatIds()
    for path in args.preds:
        masks = file_has_masks(path, scan=True)  # a mask anywhere makes it a mask file
        if masks and args.repair:  # a dropped entry would drop its mask, unsaid
            raise ValueError(f'{path} carries masks: --repair rewrites boxes only; fix the '
                             'file (each bad entry is named without --repair)')
        preds = load_member_predictions(path, sizes, cat_ids, repair=args.repair)
        if masks:
            read_member_masks(path, osp.splitext(osp.basename(path))[0], sizes,
                              preds.image_ids)
        n_img = len(set(preds.image_ids.tolist()))
        print(f"{path}: valid, {len(preds)} boxes{' with masks' if masks else ''} on "
              f"{n_img} of {len(sizes)} images"
              + (f'; repaired {preds.report}' if preds.report else ''))
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            out = osp.join(args.out_dir, osp.basename(path))
            with open(out, 'w', encoding='utf-8') as f:
                json.dump(member_results(preds), f)
            print(f'  wrote {out}')


if __name__ == '__main__':
    run_cli(main)
