from .coco_results import MemberPredictions, load_member_predictions, validate_coco_results
from .ensemble_dataset import CocoEnsembleDataset, fold_image_ids
from .transforms import LoadMemberPredictions, PackEnsembleInputs

__all__ = [
    'MemberPredictions', 'load_member_predictions', 'validate_coco_results',
    'CocoEnsembleDataset', 'fold_image_ids', 'LoadMemberPredictions', 'PackEnsembleInputs'
]
