from .ensemble_tta import EnsembleTTAModel, check_fusion, load_view_weights, merge_views

__all__ = ['EnsembleTTAModel', 'check_fusion', 'load_view_weights', 'merge_views']
