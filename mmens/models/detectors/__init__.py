from .base_ensemble import BaseEnsembleDetector
from .cel_detector import CELDetector
from .ensemble_detector import EnsembleDetector
from .fusion_detector import FusionDetector

__all__ = ['BaseEnsembleDetector', 'CELDetector', 'EnsembleDetector', 'FusionDetector']
