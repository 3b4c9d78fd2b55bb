"""After training, plot the learned Θ into the work dir and log ΣΘ."""
import os.path as osp

from mmengine.hooks import Hook
from mmens.registry import HOOKS


@HOOKS.register_module()
class ThetaPlotHook(Hook):
    """Writes ``theta.png`` (bars for a global Θ, a members × classes heatmap for a
    per-class Θ) to the work dir after training, and logs ΣΘ. Works with any head that
    has ``theta_table()`` (``LearnedFusionHead``, ``LearnedWeightsHead``)."""

    priority = 'LOW'

    def after_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        head = getattr(model, 'head', None)
        if head is None or not hasattr(head, 'theta_table'):
            return
        from mmens.visualization import plot_theta
        theta = head.theta_table().cpu().numpy()
        classes = (runner.train_dataloader.dataset.metainfo.get('classes')
                   if theta.ndim == 2 else None)
        path = plot_theta(theta, model.members, osp.join(runner.work_dir, 'theta.png'),
                          classes=classes, title=type(head).__name__)
        total = theta.sum(-1)
        summary = (f'{total:.4f}' if theta.ndim == 1 else
                   f'mean {total.mean():.4f} (min {total.min():.4f}, max {total.max():.4f})')
        runner.logger.info(f'Θ = {theta.round(4).tolist() if theta.ndim == 1 else "per class"}; '
                           f'ΣΘ = {summary}; plot: {path}')
