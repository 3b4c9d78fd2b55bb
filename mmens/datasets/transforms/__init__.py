from .formatting import PackEnsembleInputs
from .loading import LoadMemberPredictions

__all__ = ['LoadMemberPredictions', 'PackEnsembleInputs']
