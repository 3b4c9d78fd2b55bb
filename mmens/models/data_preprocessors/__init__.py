from .ensemble_preprocessor import EnsembleDataPreprocessor, pack_members

__all__ = ['EnsembleDataPreprocessor', 'pack_members']
