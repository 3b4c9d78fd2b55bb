"""Test (and evaluate) an mmens ensemble (mmdet ``tools/test.py`` shape).

Fixed fusion rules (WBF, NMS, ...) have no weights: the checkpoint is optional.
"""
import argparse

from mmengine.config import Config, ConfigDict

from mmens.registry import RUNNERS
from mmens.utils import (init_cpu_distributed, register_all_modules, run_cli,
                         shutdown_distributed)
from mmens.utils.runner_args import (add_runner_args, load_runner_cfg,
                                     parse_runner_args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) an mmens ensemble')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint file (not needed for fixed fusion rules)')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory (under work_dir/timestamp) where '
                        'painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='interval of show (s)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation of an mmdet detector: the config's "
                        'tta_model (default EnsembleTTAModel, WBF of the views) over its '
                        'tta_pipeline (default: the test pipeline, flipped and not)')
    add_runner_args(parser)
    return parse_runner_args(parser)


def build_test_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line (work dir: CLI > config > file name)."""
    cfg = load_runner_cfg(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg = tta_cfg(cfg, args.checkpoint)
    return cfg


def tta_cfg(cfg: Config, checkpoint) -> Config:
    """The config with its detector wrapped in ``tta_model`` and the test pipeline made
    ``tta_pipeline``, as mmdet's ``tools/test.py --tta`` does; the defaults are mmens':
    ``EnsembleTTAModel`` (WBF of the views) and the flipped + unflipped test pipeline.
    The Runner is mmens' (weights-only checkpoint loading) unless the config names one."""
    from copy import deepcopy

    from mmens.models.detectors.base_ensemble import BaseEnsembleDetector
    from mmens.registry import MODELS
    model_cls = MODELS.get(cfg.model.get('type')) if isinstance(cfg.model.get('type'),
                                                               str) else None
    if isinstance(model_cls, type) and issubclass(model_cls, BaseEnsembleDetector):
        raise ValueError(f'--tta: the model {cfg.model.type} is an ensemble; --tta augments '
                         'one mmdet detector (an ensemble takes flipped views as members, '
                         'see configs/live/)')
    if checkpoint is None:
        raise ValueError("--tta: give the detector's CHECKPOINT")
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmens.EnsembleTTAModel')
    if 'tta_pipeline' not in cfg:
        test_data = cfg.test_dataloader.dataset
        while 'dataset' in test_data:
            test_data = test_data['dataset']
        cfg.tta_pipeline = deepcopy(test_data.pipeline)
        cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.setdefault('runner_type', 'mmens.EnsembleRunner')
    return cfg


def main() -> None:
    args = parse_args()
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl file, got {args.out}')
    # a config typo or a misspelt option is refused first (the registries import what
    # the option check looks up); then the version check and every module
    cfg = build_test_cfg(args)
    register_all_modules(init_default_scope=False)
    init_cpu_distributed(args.launcher)
    runner = RUNNERS.build(cfg)  # runner_type (EnsembleRunner) from mmens' registry
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    shutdown_distributed()


if __name__ == '__main__':
    run_cli(main)
