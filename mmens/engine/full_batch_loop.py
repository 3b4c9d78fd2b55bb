"""A training loop that fits an ensemble head on the whole training set at once."""
import contextlib
import os
import os.path as osp
import signal
import threading
from typing import Callable, Dict, Iterator

import torch
import torch.distributed as dist
from mmengine.dist import is_main_process
from mmengine.runner import EpochBasedTrainLoop

from mmens.registry import LOOPS
from mmens.utils.batch import uncollate


def _merge(batches: list) -> dict:
    """Concatenate the dataloader's batches into one (lists of per-sample items)."""
    merged: Dict[str, list] = {'inputs': [], 'data_samples': []}
    for b in batches:
        n = len(b['data_samples'])
        merged['inputs'] += [uncollate(b['inputs'], i) for i in range(n)]
        merged['data_samples'] += list(b['data_samples'])
    return merged


@contextlib.contextmanager
def _ctrl_c_between_steps() -> Iterator[Callable[[], bool]]:
    """Defer a first Ctrl-C to the end of the current step; yields "was it pressed?".

    Python raises KeyboardInterrupt in whatever Python code runs next, and when that is a
    finaliser or a callback run from C the exception is printed as "ignored" and lost: on
    a loaded machine one Ctrl-C once did not stop a fit. A flag set by the handler and read
    between steps is never lost, and the step checkpoint is then taken at a step's end. A
    second Ctrl-C raises at once, as Python's own handler does. Outside the main thread, or
    under a handler the user installed, nothing changes."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


@LOOPS.register_module()
class FullBatchTrainLoop(EpochBasedTrainLoop):
    """Fit a small ensemble head on the whole training split as one batch.

    Ensemble heads have few parameters and convex or nearly convex objectives (e.g. the
    logistic model of :class:`LearnedWeightsHead`), where mini-batch SGD converges slowly
    and full-batch L-BFGS converges in a fraction of a second. The clusters and targets of
    the training set are computed once per epoch (``model.loss_inputs``; the matching
    weights are fixed while training), then the optimizer takes ``steps`` steps on
    ``head.loss_by_feat`` (or the model's own ``loss_by_feat``, e.g. e2e-CEL) — with a
    closure when it is L-BFGS. Hooks run as for one epoch of ``steps`` iterations, so
    logging and checkpoints work as usual.

    Training is counted in steps: ``--resume`` goes on from the step of the checkpoint,
    also when the config now asks for more ``steps`` or ``max_epochs`` than the run that
    saved it. With several processes, each computes the loss on its shard; the parameters
    start from rank 0's and the gradients *and* losses are averaged, so every rank takes the
    same steps (L-BFGS's line search evaluates its closure a data-dependent number of
    times: all ranks must see the same values to make the same number of collective calls).

    Args:
        runner, dataloader: as for mmengine loops.
        steps (int): optimizer steps per epoch (L-BFGS: outer steps of ``max_iter``
            iterations each).
        max_epochs (int): epochs of ``steps`` steps each.
        val_begin (int): the first epoch after which to validate.
        val_interval (int): validate every ``val_interval`` epochs and after the last one;
            0: never.
        checkpoint_interval (int): also save a resumable checkpoint ``iter_<step>.pth``
            every that many steps within an epoch (0: only the epoch checkpoints of
            ``CheckpointHook``). A fit stopped by Ctrl-C saves one too (of the steps whose
            hooks had all run: the step it stopped in is taken again on resuming).
    """

    def __init__(self, runner, dataloader, steps: int = 1, max_epochs: int = 1,
                 val_begin: int = 1, val_interval: int = 1,
                 checkpoint_interval: int = 0) -> None:
        for name, value, low in (('steps', steps, 1), ('max_epochs', max_epochs, 1),
                                 ('val_interval', val_interval, 0),
                                 ('checkpoint_interval', checkpoint_interval, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f'train_cfg.{name} must be an integer >= {low}, '
                                 f'got {value!r}')
        super().__init__(runner, dataloader, max_epochs=max_epochs, val_begin=val_begin,
                         val_interval=val_interval)
        self.steps = steps
        self.checkpoint_interval = checkpoint_interval
        self._step_checkpoint = None  # the last iter_<step>.pth this loop saved
        self._max_iters = steps * max_epochs

    def run(self) -> torch.nn.Module:
        """Train from the current step (0, or a resumed checkpoint's) to ``max_iters``."""
        runner = self.runner
        if self._iter > self._max_iters:
            raise ValueError(
                f'the resumed checkpoint is at step {self._iter}, but train_cfg asks for '
                f'{self._max_iters} steps in all (steps={self.steps} x '
                f'max_epochs={self._max_epochs}): ask for more steps, or do not resume')
        # a resumed run counts epochs from its step: the extra steps of a longer schedule
        # are trained in the epoch they belong to
        self._epoch = self._iter // self.steps
        runner.call_hook('before_train')
        if self._iter == self._max_iters:
            runner.logger.info(f'resumed at step {self._iter} of {self._max_iters}: '
                               'nothing left to train')
        while self._iter < self._max_iters and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (runner.val_loop is not None and self.val_interval > 0
                    and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                runner.val_loop.run()
        runner.call_hook('after_train')
        return runner.model

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
        if world > 1:  # hooks (e.g. a warm start) may have set them from the local shard
            for p in params:
                dist.broadcast(p.data, src=0)
        logged = {}

        def closure():
            optimizer.zero_grad()
            loss, log_vars = model.parse_losses(loss_by_feat(*cached))
            logged['vars'] = log_vars
            loss.backward()
            if world == 1:
                return loss
            for p in params:  # every rank reduces every parameter, in the same order
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            return mean_loss / world

        first = self._iter - self._epoch * self.steps  # > 0 when resumed within the epoch
        try:
            with _ctrl_c_between_steps() as pressed:
                for idx in range(first, self.steps):
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
                    if pressed():
                        raise KeyboardInterrupt
                    if (self.checkpoint_interval and idx + 1 < self.steps
                            and self._iter % self.checkpoint_interval == 0):
                        self.save_step_checkpoint()
        except KeyboardInterrupt:
            if self._iter > 0:
                self.save_step_checkpoint()
            raise
        runner.call_hook('after_train_epoch')
        self._epoch += 1

    def save_step_checkpoint(self) -> str:
        """Save ``iter_<step>.pth`` (model, optimizer, schedulers) and point the work dir's
        ``last_checkpoint`` at it, so that ``--resume`` goes on from this step. The step
        checkpoint this loop saved before is removed: only the latest is needed."""
        runner = self.runner
        name = f'iter_{self._iter}.pth'
        runner.save_checkpoint(runner.work_dir, name, save_optimizer=True,
                               save_param_scheduler=True,
                               meta=dict(epoch=self._epoch, iter=self._iter))
        path = osp.join(runner.work_dir, name)
        if is_main_process():
            with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
                f.write(path)
            previous = self._step_checkpoint
            if previous not in (None, path) and osp.isfile(previous):
                os.remove(previous)
        self._step_checkpoint = path
        runner.logger.info(f'Saved the checkpoint of step {self._iter}: {path}')
        return path
