from .data_preprocessors import EnsembleDataPreprocessor
from .detectors import EnsembleDetector, FusionDetector
from .heads import LearnedFusionHead, LearnedWeightsHead

__all__ = ['EnsembleDataPreprocessor', 'EnsembleDetector', 'FusionDetector',
           'LearnedFusionHead', 'LearnedWeightsHead']
