from .base_ensemble import BaseEnsembleDetector
from .cel_detector import CELDetector
from .ensemble_detector import EnsembleDetector
from .fusion_detector import FusionDetector
from .mask_fusion_detector import MaskFusionDetector

__all__ = ['BaseEnsembleDetector', 'CELDetector', 'EnsembleDetector', 'FusionDetector',
           'MaskFusionDetector']
