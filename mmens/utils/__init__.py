from .cli import run_cli
from .setup_env import (CorruptCheckpointError, UnsafeCheckpointError,
                        init_cpu_distributed, safe_checkpoint_globals, safe_torch_load,
                        setup_safe_checkpoint_loading, shutdown_distributed)

__all__ = ['run_cli', 'init_cpu_distributed', 'safe_checkpoint_globals',
           'setup_safe_checkpoint_loading', 'shutdown_distributed', 'safe_torch_load',
           'UnsafeCheckpointError', 'CorruptCheckpointError']
