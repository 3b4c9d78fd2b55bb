from .full_batch_loop import FullBatchTrainLoop
from .model_wrapper import EnsembleDistributedWrapper

__all__ = ['EnsembleDistributedWrapper', 'FullBatchTrainLoop']
