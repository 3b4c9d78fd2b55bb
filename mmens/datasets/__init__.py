"""Member predictions: COCO-results files and the dataset that feeds them to a model.

The names are imported on first use (:func:`mmens.utils.lazy.lazy_exports`): the
COCO-results readers need numpy, the dataset and its transforms need mmdet.
"""
from mmens.utils.lazy import lazy_exports

_EXPORTS = {
    'MemberPredictions': 'coco_results',
    'load_member_predictions': 'coco_results',
    'validate_coco_results': 'coco_results',
    'CocoEnsembleDataset': 'ensemble_dataset',
    'fold_image_ids': 'ensemble_dataset',
    'LoadMemberPredictions': 'transforms',
    'PackEnsembleInputs': 'transforms',
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
