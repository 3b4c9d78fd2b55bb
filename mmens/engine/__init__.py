from .model_wrapper import EnsembleDistributedWrapper

__all__ = ['EnsembleDistributedWrapper']
