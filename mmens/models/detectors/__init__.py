from .ensemble_detector import EnsembleDetector
from .fusion_detector import FusionDetector

__all__ = ['EnsembleDetector', 'FusionDetector']
