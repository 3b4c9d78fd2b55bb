"""Learn an ensemble (learned fusion or e2e-CEL), or tune a fixed rule, from COCO-results files.

Examples::

    python tools/analysis_tools/fit_ensemble.py --ann data/coco_real/annotations/val.json \\
        --preds data/coco_real/predictions/val/*.json --method learned \\
        --work-dir work_dirs/fit-learned
    python tools/analysis_tools/fit_ensemble.py --ann GT.json --preds A.json B.json C.json \\
        --method cel --budget-seconds 0.2 --member-seconds 0.17 0.17 0.004 \\
        --work-dir work_dirs/fit-cel
    python tools/analysis_tools/fit_ensemble.py --ann GT.json --preds A.json B.json \\
        --method soft_nms --work-dir work_dirs/fit-soft-nms

The recommended config of the method (the first of ``configs/learned/`` or
``configs/cel/``, or ``--config``) is pointed at the annotation and prediction files
(members named by file stem or ``--names``, as in ``fuse_results.py``; categories from
the annotation file); for e2e-CEL the budget is ``--k`` members per image or
``--budget-seconds`` per image (each member's seconds per image from ``--member-seconds``
or a ``members.json``), which pays for the probes (``--probes``; by default the config's,
else the cheapest member: run on every image, their detections choose the others), the
selected members and the selection net. ``--cfg-options`` then override anything.
The resolved config is written to ``<work-dir>/fit_ensemble_<method>.py`` and trained
through ``tools/train.py``'s code path (mmengine's Runner). The checkpoint it writes
drives ``fuse_results.py --method learned|cel --checkpoint`` on other (unlabelled) files.

``--method learned`` prints WBF's ``iou_thr``, ``skip_box_thr`` and ``conf_type`` (the
config's; a ``--config`` whose ``custom_hooks`` add ``FusionSearchHook`` chooses them by
inner cross-validation, which did not gain out of fold: docs/experiments.md) and each
member's weight. The fixed rules ``--method wbf|nms|soft_nms`` train nothing: their
settings (WBF's thresholds, NMS' ``iou_thr``, soft-NMS' ``sigma`` and ``thresh``) are the
ones of :data:`FIXED_GRIDS` with the highest COCO AP on the labelled files, printed with
the ``fuse_results.py`` command that applies them.

Bad files give the same one-line errors as ``fuse_results.py`` (they are validated by
the same code before training starts).
"""
import argparse
import glob
import importlib.util
import json
import math
import os
import os.path as osp
import shlex
from typing import List, Optional

from mmengine.config import Config

from mmens.apis import load_coco, load_member_batch
from mmens.ops.clustering import CONF_TYPES
from mmens.utils.cli import run_cli
from mmens.utils.paths import check_input_file, check_member_files, check_output_dir
from mmens.utils.runner_args import add_runner_args, check_cfg_options, parse_runner_args

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHODS = dict(learned='learned', cel='cel')  # method -> folder of configs/
FUSE_RESULTS = 'tools/analysis_tools/fuse_results.py'
#: the fixed rules whose settings are chosen by COCO AP on the labelled images (nothing is
#: fitted, so no inner CV is needed): the settings tried, the rule's default first (it
#: wins ties)
FIXED_GRIDS = dict(
    nms=[dict(iou_thr=t) for t in (0.5, 0.3, 0.4, 0.6, 0.7)],
    soft_nms=[dict(sigma=s, thresh=t) for s in (0.5, 0.05, 0.1, 0.3, 1.0)
              for t in (0.001, 0.01)],
    wbf=[dict(iou_thr=i, skip_box_thr=s, conf_type=c) for i in (0.55, 0.45, 0.65, 0.75)
         for s in (0.0, 0.02) for c in CONF_TYPES])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Learn an ensemble from COCO-results files (no config to write)')
    p.add_argument('--ann', required=True, help='COCO annotation file of the labelled split')
    p.add_argument('--preds', nargs='+', required=True,
                   help='one COCO-results JSON per member, on the images of --ann')
    p.add_argument('--names', nargs='+', help='member names (default: file stems)')
    p.add_argument('--method', required=True, choices=sorted(METHODS) + sorted(FIXED_GRIDS),
                   help='learned / cel: train (the config of configs/<method>/); wbf, nms, '
                   'soft_nms: choose the rule\'s thresholds (and sigma) by COCO AP')
    p.add_argument('--k', type=int, help='cel: members per image')
    p.add_argument('--budget-seconds', type=float,
                   help='cel: member compute per image, in seconds')
    p.add_argument('--member-seconds', nargs='+', type=float,
                   help='cel: seconds per image of each member (order of --preds)')
    p.add_argument('--probes', nargs='+', metavar='NAME',
                   help='cel: the members run on every image, whose detections the selection '
                   "reads (default: the config's probes when they are members, else the "
                   'cheapest member)')
    p.add_argument('--members-json', help='cel: JSON list of {name, seconds_per_image} '
                   '(as data/coco_real/members.json)')
    p.add_argument('--config', help='start from this config instead of the recommended one')
    p.add_argument('--repair', action='store_true',
                   help='repair bad entries (clip scores, drop invalid boxes) with counts')
    p.add_argument('--work-dir', required=True, help='where the config, logs and '
                   'checkpoint are written')
    add_runner_args(p)  # --cfg-options, --launcher, --local-rank (as tools/train.py)
    return parse_runner_args(p, argv)


def recommended_config(method: str) -> str:
    """The first config of ``configs/<method>/`` (the recommended one, by convention)."""
    found = sorted(glob.glob(osp.join(ROOT, 'configs', METHODS[method], '*.py')))
    if not found:
        raise ValueError(f'no config in {osp.join(ROOT, "configs", METHODS[method])}')
    return found[0]


def member_seconds(args: argparse.Namespace, names: List[str]) -> Optional[List[float]]:
    """Each member's seconds per image, from ``--member-seconds`` or ``--members-json``."""
    if args.member_seconds is not None and args.members_json is not None:
        raise ValueError('give --member-seconds or --members-json, not both')
    if args.member_seconds is not None:
        if len(args.member_seconds) != len(names):
            raise ValueError(f'--member-seconds has {len(args.member_seconds)} values for '
                             f'{len(names)} prediction files')
        seconds = list(args.member_seconds)
    elif args.members_json is not None:
        try:
            with open(args.members_json, encoding='utf-8') as f:
                meta = {m['name']: m for m in json.load(f)}
            seconds = [meta[n]['seconds_per_image'] for n in names if n in meta]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f'--members-json {args.members_json}: expected a JSON list of '
                             f'{{name, seconds_per_image}} objects ({type(e).__name__}: '
                             f'{e})') from None
        missing = [n for n in names if n not in meta]
        if missing:
            raise ValueError(f'--members-json {args.members_json} has no entry for '
                             f'member(s) {missing}')
    else:
        return None
    bad = [(n, s) for n, s in zip(names, seconds)
           if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0]
    if bad:
        raise ValueError(f'seconds per image must be finite and > 0, got {bad}')
    return [float(s) for s in seconds]


def check_budget(args: argparse.Namespace, names: List[str],
                 seconds: Optional[List[float]]) -> None:
    """The budget options fit the method and the members."""
    if args.method != 'cel':
        if args.k is not None or args.budget_seconds is not None:
            raise ValueError(f'--k / --budget-seconds are for --method cel, not '
                             f'{args.method}')
        if args.probes:
            raise ValueError(f'--probes is for --method cel, not {args.method}')
        if seconds is not None:
            raise ValueError(f'--member-seconds / --members-json are for --method cel, '
                             f'not {args.method}')
        return
    if (args.k is None) == (args.budget_seconds is None):
        raise ValueError('--method cel needs exactly one of --k (members per image) or '
                         '--budget-seconds (member compute per image)')
    if args.k is not None and not 1 <= args.k <= len(names):
        raise ValueError(f'--k must be between 1 and the {len(names)} members, got {args.k}')
    if args.budget_seconds is not None:
        if seconds is None:
            raise ValueError('--budget-seconds needs each member\'s seconds per image: '
                             'pass --member-seconds s1 s2 ... or --members-json FILE')
        if not math.isfinite(args.budget_seconds) or args.budget_seconds < min(seconds):
            raise ValueError(f'--budget-seconds {args.budget_seconds} is below the '
                             f'cheapest member ({min(seconds)} s per image): no member '
                             'fits')


def cel_probes(args: argparse.Namespace, cfg: Config, names: List[str],
               seconds: Optional[List[float]]) -> List[str]:
    """e2e-CEL's probes: ``--probes``, else the config's when they are all members, else
    the cheapest member (by ``--member-seconds``); a budget must pay for them."""
    if args.probes:
        probes = list(args.probes)
        unknown = [p for p in probes if p not in names]
        if unknown:
            raise ValueError(f'--probes {unknown} are not members ({names})')
    elif all(p in names for p in cfg.model.get('probes') or []):
        probes = list(cfg.model.get('probes') or [])
    elif seconds is not None:
        probes = [names[min(range(len(names)), key=seconds.__getitem__)]]
    else:
        raise ValueError(f"the config's probes {list(cfg.model.probes)} are not members "
                         f'({names}): name them with --probes NAME, or give --member-seconds '
                         '(the cheapest member is then the probe)')
    if args.budget_seconds is not None:
        paid = sum(seconds[names.index(p)] for p in probes)
        if args.budget_seconds < paid:
            raise ValueError(f'--budget-seconds {args.budget_seconds} is below the probes '
                             f'{probes} ({paid:g} s per image), which run on every image')
    return probes


def point_dataset(ds: dict, ann: str, members: List[dict], classes: tuple,
                  repair: bool) -> None:
    """Point a (possibly wrapped) ``CocoEnsembleDataset`` config at the given files."""
    if 'dataset' in ds and isinstance(ds['dataset'], dict):  # dataset wrappers
        point_dataset(ds['dataset'], ann, members, classes, repair)
        return
    ds.update(data_root='', ann_file=ann, data_prefix=dict(img=''), members=members,
              pred_prefix='', members_meta=None, metainfo=dict(classes=classes),
              repair=repair)


def read_config(args: argparse.Namespace) -> Config:
    """The method's recommended config (or ``--config``), checked before any work: it
    reads as a config, its model fits ``--method``, and every ``--cfg-options`` key names
    something it can take."""
    path = args.config or recommended_config(args.method)  # --config: see check_paths
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # noqa: BLE001 (a file that is no config: any error mmengine has)
        raise ValueError(f'config {path} could not be read as an mmengine config '
                         f'({type(e).__name__}: {e})') from None
    model = cfg.get('model')
    model_type = model.get('type') if isinstance(model, dict) else None
    if (args.method == 'cel') != (model_type == 'CELDetector') or model_type is None:
        raise ValueError(f'config {path} (model type {model_type!r}) does not fit '
                         f'--method {args.method}')
    if args.cfg_options is not None:
        check_cfg_options(cfg, args.cfg_options)
    return cfg


def fit_config(args: argparse.Namespace, cfg: Config, names: List[str], classes: tuple,
               seconds: Optional[List[float]]) -> Config:
    """The config of :func:`read_config` pointed at the files, with the budget set."""
    ann = osp.abspath(args.ann)
    members = [dict(name=n, file=osp.abspath(f)) for n, f in zip(names, args.preds)]
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key) is not None:
            point_dataset(cfg[key]['dataset'], ann, members, classes, args.repair)
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        for ev in evaluators if isinstance(evaluators, list) else [evaluators]:
            if isinstance(ev, dict) and 'ann_file' in ev:
                ev['ann_file'] = ann
    cfg.model.members = list(names)
    if args.method == 'cel':
        cfg.model.member_seconds = seconds
        cfg.model.probes = cel_probes(args, cfg, names, seconds)
        selector = {k: v for k, v in cfg.model.selector.items()
                    if k not in ('k', 'budget', 'costs')}
        if args.k is not None:
            selector['k'] = args.k
        else:
            selector['budget'] = args.budget_seconds
        cfg.model.selector = selector
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    return cfg


def load_train_tool():
    """``tools/train.py`` as a module: training goes through its very code path."""
    spec = importlib.util.spec_from_file_location(
        'mmens_train_tool', osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_learned(ckpt: str) -> None:
    """Print what a learned fit chose, as the checkpoint holds it: the fusion thresholds
    (inner CV) and each member's WBF weight."""
    from mmens.apis.inference import load_ensemble_checkpoint
    model = load_ensemble_checkpoint(ckpt)
    if not hasattr(model, 'fusion_cfg') or not hasattr(model.head, 'member_weights'):
        return
    cfg = model.fusion_cfg()
    print(f"fusion: iou_thr {cfg['iou_thr']:g}, skip_box_thr {cfg['skip_box_thr']:g}, "
          f"conf_type {cfg['conf_type']}"
          + (' (chosen by inner CV)' if bool(model.fusion_searched) else ''))
    weights = model.head.member_weights().tolist()
    for name, weight in zip(model.members, weights):
        print(f'member {name}: weight {weight:.2f}')


def tune_fixed(args: argparse.Namespace, names: List[str]) -> None:
    """A fixed rule (``--method wbf|nms|soft_nms``): every setting of
    :data:`FIXED_GRIDS` fuses the labelled files, the one with the highest COCO AP (fast
    COCO AP) is printed, written to ``<work-dir>/fit_ensemble_<method>.json`` and given as
    the ``fuse_results.py`` command that applies it."""
    import numpy as np

    from mmens.apis.inference import build_fixed_ensemble, fuse_batch_arrays
    from mmens.evaluation.coco_eval import CocoEvaluation
    if args.config is not None or args.cfg_options is not None:
        raise ValueError(f'--config / --cfg-options are for --method learned or cel, not '
                         f'{args.method} (a fixed rule has no config to train)')
    coco = load_coco(args.ann)
    batch = load_member_batch(coco, args.preds, names, repair=args.repair)
    every = np.arange(len(batch.img_ids))
    aps = []
    for setting in FIXED_GRIDS[args.method]:
        dets, _ = fuse_batch_arrays(build_fixed_ensemble(names, args.method, **setting),
                                    batch)
        aps.append(CocoEvaluation(coco, dets, batch.img_ids, ap_only=True).ap(every))
    best = int(np.argmax(aps))  # the first maximum: the default wins ties
    chosen = FIXED_GRIDS[args.method][best]
    shown = ', '.join(f'{k} {v}' for k, v in chosen.items())
    print(f'{args.method}: {shown} (COCO AP {100 * aps[best]:.1f} on the '
          f'{len(batch.img_ids)} images of --ann; {len(aps)} settings tried, the default '
          f'{100 * aps[0]:.1f})')
    os.makedirs(args.work_dir, exist_ok=True)
    out = osp.join(args.work_dir, f'fit_ensemble_{args.method}.json')
    with open(out, 'w', encoding='utf-8') as f:
        json.dump(dict(method=args.method, **chosen, ap=aps[best],
                       tried=[dict(s, ap=a) for s, a in zip(FIXED_GRIDS[args.method], aps)]),
                  f, indent=1)
    q = shlex.quote
    flags = ' '.join(f"--{k.replace('_', '-')} {v}" for k, v in chosen.items())
    print(f'settings: {out}')
    print('fuse files of the same members with it (swap in the test split\'s files; '
          '--no-eval when they have no labels):')
    print(f'  python {FUSE_RESULTS} --ann {q(args.ann)} --preds '
          f'{" ".join(q(p) for p in args.preds)} --names {" ".join(q(n) for n in names)} '
          f'--method {args.method} {flags} --out fused.json')


def check_paths(args: argparse.Namespace) -> None:
    """The files to read exist and the work dir can be written, before any work."""
    check_member_files(args.ann, args.preds)
    for opt in ('config', 'members_json'):
        if getattr(args, opt) is not None:
            check_input_file(getattr(args, opt), '--' + opt.replace('_', '-'))
    check_output_dir(args.work_dir, '--work-dir')


def main(argv=None) -> None:
    args = parse_args(argv)
    names = args.names or [osp.splitext(osp.basename(f))[0] for f in args.preds]
    if len(names) != len(args.preds):
        raise ValueError(f'{len(names)} names for {len(args.preds)} prediction files')
    check_paths(args)
    seconds = member_seconds(args, names)
    check_budget(args, names, seconds)
    if args.method in FIXED_GRIDS:
        return tune_fixed(args, names)
    cfg = read_config(args)
    # the files are validated as fuse_results.py does (same code, same one-line errors)
    coco = load_coco(args.ann)
    batch = load_member_batch(coco, args.preds, names, repair=args.repair)
    for m in batch.members:
        if m.report:
            print(f"member '{m.name}': repaired {m.report}")
    # the annotation file's categories, in its order (any category set, not only COCO's)
    classes = tuple(c['name'] for c in coco.dataset['categories'])
    cfg = fit_config(args, cfg, names, classes, seconds)
    os.makedirs(args.work_dir, exist_ok=True)
    cfg_path = osp.join(args.work_dir, f'fit_ensemble_{args.method}.py')
    cfg.dump(cfg_path)

    train = load_train_tool()
    train_argv = [cfg_path, '--work-dir', args.work_dir, '--launcher', args.launcher,
                  '--local-rank', str(args.local_rank)]
    train.train(train.parse_args(train_argv))

    if os.environ.get('RANK', '0') != '0':
        return
    from mmengine.runner.checkpoint import find_latest_checkpoint
    ckpt = find_latest_checkpoint(args.work_dir)
    if ckpt is None or not osp.isfile(ckpt):
        raise ValueError(f'training wrote no checkpoint in {args.work_dir} (check '
                         'default_hooks.checkpoint in the config)')
    if args.method == 'learned':
        print_learned(ckpt)
    budget = ('' if args.method != 'cel' else f' (k = {args.k})' if args.k is not None
              else f' (budget {args.budget_seconds} s per image, probes '
              f'{cfg.model.probes} included)')
    q = shlex.quote
    print(f'config: {cfg_path}')
    print(f'checkpoint: {ckpt}')
    print(f'fuse files of the same members{budget} with it (swap in the test split\'s '
          'files; --no-eval when they have no labels):')
    print(f'  python {FUSE_RESULTS} --ann {q(args.ann)} --preds '
          f'{" ".join(q(p) for p in args.preds)} --names {" ".join(q(n) for n in names)} '
          f'--method {args.method} --checkpoint {q(ckpt)} --out fused.json')


if __name__ == '__main__':
    run_cli(main)
