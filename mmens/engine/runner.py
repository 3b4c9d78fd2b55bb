"""The Runner of mmens configs: weights-only checkpoints, without patching mmengine."""
import ast
import copy
import importlib.util
import os.path as osp
import sys
import types
from typing import Optional

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from mmens.registry import MODEL_WRAPPERS, RUNNERS
from mmens.utils.setup_env import data_only_message_hub, safe_torch_load


class DataOnlyCheckpointHook(Hook):
    """Saves the ``MessageHub`` of a checkpoint as data only (see
    :func:`mmens.utils.data_only_message_hub`), so that the checkpoint loads with
    ``torch.load(weights_only=True)``. Runs last, after every hook that adds to the
    checkpoint; :class:`EnsembleRunner` registers it itself."""

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = data_only_message_hub(checkpoint['message_hub'])


def _keys(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more'
                                      if len(keys) > limit else '')


class _TextOnceConfig(Config):
    """mmengine's Config, formatting its text once per content. The Runner asks for
    ``pretty_text`` for the environment log, the work dir's copy of the config, the
    visualizer's copy, the message hub and every checkpoint: five times or more per
    ``tools/train.py`` run. yapf takes 0.1 s for a config with short paths, but 1.5-2 s
    for one naming six member files under a long directory, as ``fit_ensemble.py``
    writes them. The text is the same unless the config changed in between, which the
    cache key (the dict's repr) sees."""

    @property
    def pretty_text(self) -> str:
        key = repr(self._cfg_dict)
        cached = self.__dict__.get('_text_once')
        if cached is None or cached[0] != key:
            cached = (key, super().pretty_text)
            # past Config.__setattr__, which would store it as a config key
            object.__setattr__(self, '_text_once', cached)
        return cached[1]


@RUNNERS.register_module()
class EnsembleRunner(Runner):
    """mmengine's Runner, loading and resuming local checkpoints through
    :func:`mmens.utils.safe_torch_load`.

    ``load_from``, ``--resume`` and ``tools/test.py CHECKPOINT`` load with
    ``torch.load(weights_only=True)`` and mmens' allow-list: a checkpoint that would run
    code, a corrupt one, and one of another model (e.g. a learned-weights checkpoint given
    to an e2e-CEL config) are refused with a one-line ``ValueError``. Only this Runner does
    so: mmengine's ``CheckpointLoader`` stays as it is for every other caller. Checkpoints
    it saves hold data only (:class:`DataOnlyCheckpointHook`). Set by
    ``runner_type = 'EnsembleRunner'`` in ``configs/_base_/default_runtime.py``.
    """

    def __init__(self, *args, **kwargs) -> None:
        cfg = kwargs.get('cfg')
        if type(cfg) is Config:  # the Runner deep-copies it, keeping the class
            kwargs['cfg'] = copy.copy(cfg)
            object.__setattr__(kwargs['cfg'], '__class__', _TextOnceConfig)
        super().__init__(*args, **kwargs)
        self.register_hook(DataOnlyCheckpointHook())

    def _log_env(self, env_cfg: dict) -> None:
        """As mmengine's, without importing torchvision. mmengine's ``collect_env``
        imports it only to print its version, and that import (torchvision.ops pulls in
        torch._dynamo and triton) costs 1.3-2 s of every ``tools/train.py`` and
        ``tools/test.py`` run, which use no torchvision op. While the environment is
        logged, a module holding only the version read from torchvision's ``version.py``
        stands in for it, so the log is mmengine's, line for line."""
        version = None if 'torchvision' in sys.modules else _torchvision_version()
        if version is None:
            return super()._log_env(env_cfg)
        stand_in = types.ModuleType('torchvision')
        stand_in.__version__ = version
        sys.modules['torchvision'] = stand_in
        try:
            super()._log_env(env_cfg)
        finally:
            if sys.modules.get('torchvision') is stand_in:
                del sys.modules['torchvision']

    def wrap_model(self, model_wrapper_cfg: Optional[dict], model):
        """As mmengine's, with the wrapper ``type`` looked up in mmens' node: mmengine's
        Runner looks it up in its root node, which does not see its descendants'
        modules, so the type is passed on as the wrapper's import path."""
        if model_wrapper_cfg is not None and isinstance(model_wrapper_cfg.get('type'), str):
            wrapper = MODEL_WRAPPERS.get(model_wrapper_cfg['type'])
            if wrapper is not None:
                model_wrapper_cfg = dict(model_wrapper_cfg,
                                         type=f'{wrapper.__module__}.{wrapper.__qualname__}')
        return super().wrap_model(model_wrapper_cfg, model)

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]) -> dict:  # noqa: B006
        """As :meth:`mmengine.runner.Runner.load_checkpoint` (the same arguments), through
        :func:`safe_torch_load` for a local file, refusing a checkpoint whose weights do
        not fit the model (``strict`` or not) in one line."""
        if '://' in str(filename):  # URLs and other backends: mmengine's own loaders
            return super().load_checkpoint(filename, map_location, strict, revise_keys)
        checkpoint = safe_torch_load(filename, map_location=map_location)
        if not isinstance(checkpoint, dict):
            raise ValueError(f'{filename}: holds a {type(checkpoint).__name__}, not an '
                             'mmengine checkpoint dict')
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if isinstance(model, BaseTTAModel):  # tools/test.py --tta: the detector's weights
            model = model.module
        self._check_fits(filename, model, checkpoint)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict,
                                               revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @staticmethod
    def _check_fits(filename: str, model, checkpoint: dict) -> None:
        """A one-line ``ValueError`` when the checkpoint's weights are not the model's
        (mmengine only warns, then evaluates a model that was not loaded)."""
        state = checkpoint.get('state_dict', checkpoint)
        have = {k[len('module.'):] if k.startswith('module.') else k for k in state}
        want = set(model.state_dict())
        unexpected = have - want
        # the data preprocessor has no weights of its own worth refusing over
        missing = {k for k in want - have if not k.startswith('data_preprocessor.')}
        if not unexpected and not missing:
            return
        meta_cfg = checkpoint.get('meta', {}).get('cfg') or ''
        saved = _model_type(meta_cfg)
        raise ValueError(
            f'{filename}: does not fit the config\'s model {type(model).__name__}'
            + (f" (the checkpoint's model is {saved})" if saved else '')
            + (f'; unexpected weights {_keys(unexpected)}' if unexpected else '')
            + (f'; missing weights {_keys(missing)}' if missing else ''))


def _torchvision_version() -> Optional[str]:
    """``torchvision.__version__`` as its ``version.py`` assigns it (``'0.29.1+cu130'``:
    the distribution's metadata has no local label), without importing the package; None
    when torchvision is not installed or the file does not read that way."""
    spec = importlib.util.find_spec('torchvision')
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(osp.join(spec.submodule_search_locations[0], 'version.py')) as f:
            for line in f:
                if line.startswith('__version__ = '):
                    version = ast.literal_eval(line.split('=', 1)[1].strip())
                    return version if isinstance(version, str) else None
    except (OSError, ValueError, SyntaxError):
        return None
    return None


def _model_type(cfg_text: str) -> Optional[str]:
    """The ``model.type`` of a checkpoint's saved config text, if it parses."""
    if not cfg_text:
        return None
    try:
        from mmengine.config import Config
        return Config.fromstring(cfg_text, file_format='.py').model.type
    except Exception:  # an old or foreign config: the weights' names say enough
        return None

