"""Member predictions: COCO-results files and the dataset that feeds them to a model.

The names are imported on first use (:func:`mmens.utils.lazy.lazy_exports`): the
COCO-results readers need numpy, the dataset and its transforms need mmdet.
"""
from mmens.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'coco_results': ['MemberPredictions', 'load_member_predictions', 'validate_coco_results'],
    'ensemble_dataset': ['CocoEnsembleDataset', 'fold_image_ids'],
    'transforms': ['LoadMemberPredictions', 'PackEnsembleInputs'],
})
