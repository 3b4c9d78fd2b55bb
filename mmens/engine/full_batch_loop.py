"""A training loop that fits an ensemble head on the whole training set at once."""
from typing import Dict

import torch
import torch.distributed as dist
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop

from mmens.utils.batch import uncollate


def _merge(batches: list) -> dict:
    """Concatenate the dataloader's batches into one (lists of per-sample items)."""
    merged: Dict[str, list] = {'inputs': [], 'data_samples': []}
    for b in batches:
        n = len(b['data_samples'])
        merged['inputs'] += [uncollate(b['inputs'], i) for i in range(n)]
        merged['data_samples'] += list(b['data_samples'])
    return merged


@LOOPS.register_module()
class FullBatchTrainLoop(EpochBasedTrainLoop):
    """Fit a small ensemble head on the whole training split as one batch.

    Ensemble heads have few parameters and convex or nearly convex objectives (e.g. the
    logistic model of :class:`LearnedWeightsHead`), where mini-batch SGD converges slowly
    and full-batch L-BFGS converges in a fraction of a second. The clusters and targets of
    the training set are computed once (``model.loss_inputs``; the matching weights are
    fixed while training), then the optimizer takes ``steps`` steps on
    ``head.loss_by_feat`` (or the model's own ``loss_by_feat``, e.g. e2e-CEL) — with a
    closure when it is L-BFGS. Hooks run as for one epoch of ``steps`` iterations, so
    logging, checkpoints and resuming work as usual. With several processes, each computes
    the loss on its shard and the gradients are averaged.

    Args:
        runner, dataloader: as for mmengine loops.
        steps (int): optimizer steps per epoch (L-BFGS: outer steps of ``max_iter``
            iterations each).
        max_epochs (int): epochs of ``steps`` steps each (checkpoints and ``--resume`` are
            per epoch, as with mmengine's loops).
        val_interval (int): validate after the fit (1) or never (0).
    """

    def __init__(self, runner, dataloader, steps: int = 1, max_epochs: int = 1,
                 val_begin: int = 1, val_interval: int = 1) -> None:
        super().__init__(runner, dataloader, max_epochs=max_epochs, val_begin=val_begin,
                         val_interval=max(1, val_interval))
        self.steps = steps
        self._max_iters = steps * max_epochs

    def run_epoch(self) -> None:
        runner = self.runner
        runner.call_hook('before_train_epoch')
        runner.model.train()
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        data = model.data_preprocessor(_merge(list(self.dataloader)), True)
        cached = model.loss_inputs(data['inputs'], data['data_samples'])
        # heads learn through head.loss_by_feat; detectors without a head (e2e-CEL) own it
        loss_by_feat = getattr(model, 'loss_by_feat', None) or model.head.loss_by_feat
        optimizer = runner.optim_wrapper.optimizer
        params = [p for g in optimizer.param_groups for p in g['params']]
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

        logged = {}

        def closure():
            optimizer.zero_grad()
            loss, log_vars = model.parse_losses(loss_by_feat(*cached))
            logged['vars'] = log_vars
            loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            return loss

        for idx in range(self.steps):
            runner.call_hook('before_train_iter', batch_idx=idx, data_batch=None)
            if isinstance(optimizer, torch.optim.LBFGS):
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
            # the loss of the step's (last) evaluation, as mmengine's loops log it
            runner.call_hook('after_train_iter', batch_idx=idx, data_batch=None,
                             outputs=logged['vars'])
            self._iter += 1
        runner.call_hook('after_train_epoch')
        self._epoch += 1
