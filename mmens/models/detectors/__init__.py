from .fusion_detector import FusionDetector

__all__ = ['FusionDetector']
