from .learned_fusion_head import LearnedFusionHead

__all__ = ['LearnedFusionHead']
