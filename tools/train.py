"""Train an mmens ensemble (mmdet/mmyolo ``tools/train.py`` shape)."""
import argparse

from mmengine.config import Config
from mmengine.runner import Runner

from mmens.registry import RUNNERS
from mmens.utils import (init_cpu_distributed, register_all_modules, run_cli,
                         shutdown_distributed)
from mmens.utils.runner_args import (add_runner_args, load_runner_cfg,
                                     parse_runner_args)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train an mmens ensemble')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or with no value from the '
                        'latest checkpoint in the work dir')
    add_runner_args(parser)
    return parse_runner_args(parser, argv)


def build_train_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line (work dir: CLI > config > file name)."""
    cfg = load_runner_cfg(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def train(args: argparse.Namespace) -> Runner:
    """Build the runner from parsed arguments and train (also the path that
    ``tools/analysis_tools/fit_ensemble.py`` trains through)."""
    # a config typo or a misspelt option is refused first (the registries import what
    # the option check looks up); then the version check and every module
    cfg = build_train_cfg(args)
    register_all_modules(init_default_scope=False)
    init_cpu_distributed(args.launcher)
    runner = RUNNERS.build(cfg)  # runner_type (EnsembleRunner) from mmens' registry
    runner.train()
    shutdown_distributed()
    return runner


def main() -> None:
    train(parse_args())


if __name__ == '__main__':
    run_cli(main)
