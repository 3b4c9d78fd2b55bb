from .cel_warm_start_hook import CELWarmStartHook
from .full_batch_loop import FullBatchTrainLoop
from .fusion_search_hook import FusionSearchHook
from .model_wrapper import EnsembleDistributedWrapper
from .runner import DataOnlyCheckpointHook, EnsembleRunner
from .theta_plot_hook import ThetaPlotHook

__all__ = ['CELWarmStartHook', 'DataOnlyCheckpointHook', 'EnsembleDistributedWrapper',
           'EnsembleRunner', 'FullBatchTrainLoop', 'FusionSearchHook', 'ThetaPlotHook']
