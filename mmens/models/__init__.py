from .data_preprocessors import EnsembleDataPreprocessor
from .detectors import CELDetector, EnsembleDetector, FusionDetector
from .heads import LearnedFusionHead, LearnedWeightsHead, MemberSelectionNet
from .live_members import LiveMembers
from .tta import EnsembleTTAModel

__all__ = ['CELDetector', 'MemberSelectionNet', 'EnsembleDataPreprocessor',
           'EnsembleDetector', 'EnsembleTTAModel', 'FusionDetector', 'LearnedFusionHead',
           'LearnedWeightsHead', 'LiveMembers']
