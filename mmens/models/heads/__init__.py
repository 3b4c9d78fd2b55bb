from .selection_net import MemberSelectionNet
from .learned_fusion_head import LearnedFusionHead
from .learned_weights_head import LearnedWeightsHead

__all__ = ['MemberSelectionNet', 'LearnedFusionHead', 'LearnedWeightsHead']
