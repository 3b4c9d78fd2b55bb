"""Test (and evaluate) an mmens ensemble (mmdet ``tools/test.py`` shape).

Fixed fusion rules (WBF, NMS, ...) have no weights: the checkpoint is optional.
"""
import argparse

from mmengine.config import Config

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
    add_runner_args(parser)
    return parse_runner_args(parser)


def build_test_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line (work dir: CLI > config > file name)."""
    cfg = load_runner_cfg(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
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
