"""A distributed model wrapper that works on CPU (gloo) and CUDA, with or without parameters."""
from typing import Dict, Optional, Union

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from torch import nn

from mmens.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class EnsembleDistributedWrapper(nn.Module):
    """Distributed wrapper for ensemble detectors.

    mmengine's default wrapper passes ``device_ids=[LOCAL_RANK]`` (CUDA only) and
    ``DistributedDataParallel`` refuses a module without trainable parameters (WBF, NMS).
    This wrapper keeps the module itself for ``val_step``/``test_step`` (no gradient sync is
    needed there: mmengine's evaluator gathers results across ranks), and trains through an
    inner :class:`MMDistributedDataParallel` built with the device of the parameters
    (``device_ids=None`` on CPU) when there is anything to train.

    Args:
        module (nn.Module): the detector.
        broadcast_buffers (bool), find_unused_parameters (bool): passed to DDP.
    """

    def __init__(self, module: nn.Module, broadcast_buffers: bool = False,
                 find_unused_parameters: bool = False) -> None:
        super().__init__()
        self.module = module
        self._ddp: Optional[list] = None  # a list: not a sub-module, so not saved twice
        params = [p for p in module.parameters() if p.requires_grad]
        if params and dist.is_available() and dist.is_initialized():
            device = params[0].device
            device_ids = [device.index] if device.type == 'cuda' else None
            self._ddp = [MMDistributedDataParallel(
                module=module, device_ids=device_ids, broadcast_buffers=broadcast_buffers,
                find_unused_parameters=find_unused_parameters)]

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        if self._ddp is None:
            return self.module.train_step(data, optim_wrapper)
        return self._ddp[0].train_step(data, optim_wrapper)

    def val_step(self, data: Union[dict, tuple, list]) -> list:
        return self.module.val_step(data)

    def test_step(self, data: Union[dict, tuple, list]) -> list:
        return self.module.test_step(data)
