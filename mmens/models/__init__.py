from .data_preprocessors import EnsembleDataPreprocessor
from .detectors import FusionDetector

__all__ = ['EnsembleDataPreprocessor', 'FusionDetector']
