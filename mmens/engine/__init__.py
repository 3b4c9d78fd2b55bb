from .full_batch_loop import FullBatchTrainLoop
from .model_wrapper import EnsembleDistributedWrapper
from .theta_plot_hook import ThetaPlotHook

__all__ = ['EnsembleDistributedWrapper', 'FullBatchTrainLoop', 'ThetaPlotHook']
