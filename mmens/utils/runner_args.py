"""What tools/train.py and tools/test.py share: runner arguments and config loading."""
import argparse
import inspect
import os
import os.path as osp

from mmengine.config import Config, DictAction


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``, as in mmdet's tools."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (mmengine DictAction); '
                        'a key must exist in the config, or be an argument of the '
                        "module its dict builds (e.g. train_cfg.max_epochs)")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, and export ``LOCAL_RANK`` for launchers that pass ``--local-rank``."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_runner_cfg(args: argparse.Namespace) -> Config:
    """Load ``args.config``, merge ``--cfg-options``; work dir: CLI > config > file name.

    A missing config file and an option key that the config cannot take are refused in
    one line (``ValueError``) before anything runs (mmengine would add a misspelt key and
    ignore it, or fail after the whole run).
    """
    if not osp.isfile(args.config):
        raise ValueError(f'config {args.config} does not exist')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def check_cfg_options(cfg: Config, options: dict) -> None:
    """Refuse, in one line, an option key that names nothing the config can take.

    A key (``a.b.c``, list items by index as mmengine merges them) must exist in the
    config, except its last part when that is an argument of the class that its dict
    builds (``train_cfg.max_epochs`` for ``FullBatchTrainLoop``), a new key of a dict
    without a ``type`` (keyword arguments passed on as a whole, e.g. ``model.selector``),
    or, at the top level, an argument of the Runner.
    """
    for key in options:
        parts = key.split('.')
        node = cfg._cfg_dict if isinstance(cfg, Config) else cfg
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            elif last and isinstance(node, dict) and _accepts(node, part, top=i == 0):
                break
            else:
                where = "the config's top level" if i == 0 else '.'.join(parts[:i])
                raise ValueError(f"--cfg-options {key}: {where} has no key '{part}'"
                                 + _hint(node, part))


def _hint(node, part: str) -> str:
    """' (did you mean ...?)' for a near miss among the node's keys."""
    import difflib
    keys = [str(k) for k in node] if isinstance(node, dict) else []
    close = difflib.get_close_matches(part, keys, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ''


def _accepts(node: dict, name: str, top: bool) -> bool:
    """Whether ``name`` is a keyword argument of what ``node`` builds (the Runner at the
    top level, else the class registered as ``node['type']``)."""
    if top:
        from mmengine.runner import Runner
        return name in inspect.signature(Runner.__init__).parameters
    if 'type' not in node:  # keyword arguments of some class (e.g. model.selector)
        return True
    cls = _registered_class(node['type'])
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else ():
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return False  # no **kwargs: the remaining bases cannot receive it
    return False


def _registered_class(type_):
    """The class a config dict's ``type`` names, looked up in mmens' registry nodes."""
    if not isinstance(type_, str):
        return type_
    from mmens import registry
    nodes = [getattr(registry, n) for n in dir(registry) if n.isupper()]
    for node in nodes:
        try:
            cls = node.get(type_)
        except (KeyError, RuntimeError):  # not a name of this node
            cls = None
        if cls is not None:
            return cls
    return None
