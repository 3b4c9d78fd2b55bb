from .cli import run_cli
from .setup_env import (CorruptCheckpointError, UnsafeCheckpointError,
                        check_openmmlab_versions, data_only_message_hub,
                        init_cpu_distributed, register_all_modules,
                        safe_checkpoint_globals, safe_torch_load, shutdown_distributed)

__all__ = ['run_cli', 'init_cpu_distributed', 'register_all_modules',
           'check_openmmlab_versions', 'data_only_message_hub', 'safe_checkpoint_globals',
           'shutdown_distributed', 'safe_torch_load', 'UnsafeCheckpointError',
           'CorruptCheckpointError']
