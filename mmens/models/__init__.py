from .data_preprocessors import EnsembleDataPreprocessor
from .detectors import EnsembleDetector, FusionDetector
from .heads import LearnedFusionHead

__all__ = ['EnsembleDataPreprocessor', 'EnsembleDetector', 'FusionDetector',
           'LearnedFusionHead']
