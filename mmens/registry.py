"""mmens' registry nodes, children of mmdet's (as mmyolo's and mmrotate's are).

Every mmens module registers here. A config with ``default_scope = 'mmens'`` builds from
these nodes: a name is looked up in mmens first, then in mmdet and mmengine (the parents),
so ``CocoDataset`` or ``CheckpointHook`` need no scope prefix. The ``locations`` are imported
the first time a node is searched, so nothing of mmens is imported until a config needs it;
:func:`mmens.utils.register_all_modules` imports all of them at once.

Importing this module imports mmdet's registry (and so mmengine); ``import mmens`` does not
import it.
"""
from mmdet.registry import DATA_SAMPLERS as MMDET_DATA_SAMPLERS
from mmdet.registry import DATASETS as MMDET_DATASETS
from mmdet.registry import EVALUATOR as MMDET_EVALUATOR
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import LOG_PROCESSORS as MMDET_LOG_PROCESSORS
from mmdet.registry import LOOPS as MMDET_LOOPS
from mmdet.registry import METRICS as MMDET_METRICS
from mmdet.registry import MODEL_WRAPPERS as MMDET_MODEL_WRAPPERS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_OPTIM_WRAPPER_CONSTRUCTORS
from mmdet.registry import OPTIM_WRAPPERS as MMDET_OPTIM_WRAPPERS
from mmdet.registry import OPTIMIZERS as MMDET_OPTIMIZERS
from mmdet.registry import PARAM_SCHEDULERS as MMDET_PARAM_SCHEDULERS
from mmdet.registry import RUNNER_CONSTRUCTORS as MMDET_RUNNER_CONSTRUCTORS
from mmdet.registry import RUNNERS as MMDET_RUNNERS
from mmdet.registry import TASK_UTILS as MMDET_TASK_UTILS
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmdet.registry import VISBACKENDS as MMDET_VISBACKENDS
from mmdet.registry import VISUALIZERS as MMDET_VISUALIZERS
from mmdet.registry import WEIGHT_INITIALIZERS as MMDET_WEIGHT_INITIALIZERS
from mmengine.registry import Registry as _MMEngineRegistry

_SCOPE = 'mmens'


class Registry(_MMEngineRegistry):
    """A registry node that also imports its parents' ``locations`` on first search.

    mmengine imports only the searched node's own locations, then looks names up in the
    parents' *already registered* modules. An mmens config names mmdet modules without a
    scope (``DetVisualizationHook``, ``DetLocalVisualizer``): importing mmdet's locations too
    makes them resolve however the process started (a Runner built from a config, or
    :func:`mmens.utils.register_all_modules`).
    """

    def import_from_location(self) -> None:
        if not self._imported and self.parent is not None:
            self.parent.import_from_location()
        super().import_from_location()


# runners (EnsembleRunner: weights-only checkpoint loading), loops (FullBatchTrainLoop),
# hooks (ThetaPlotHook) and the distributed wrapper that works on CPU (gloo) and without
# parameters (EnsembleDistributedWrapper)
RUNNERS = Registry('runner', scope=_SCOPE, parent=MMDET_RUNNERS, locations=['mmens.engine'])
LOOPS = Registry('loop', scope=_SCOPE, parent=MMDET_LOOPS, locations=['mmens.engine'])
HOOKS = Registry('hook', scope=_SCOPE, parent=MMDET_HOOKS, locations=['mmens.engine'])
MODEL_WRAPPERS = Registry('model_wrapper', scope=_SCOPE, parent=MMDET_MODEL_WRAPPERS,
                          locations=['mmens.engine'])

# data: the cached-prediction dataset and its transforms
DATASETS = Registry('dataset', scope=_SCOPE, parent=MMDET_DATASETS,
                    locations=['mmens.datasets.ensemble_dataset'])
TRANSFORMS = Registry('transform', scope=_SCOPE, parent=MMDET_TRANSFORMS,
                      locations=['mmens.datasets.transforms'])

# models: detectors, heads, the selection net, the data preprocessor
MODELS = Registry('model', scope=_SCOPE, parent=MMDET_MODELS, locations=['mmens.models'])

# evaluation: SubsetCocoMetric
METRICS = Registry('metric', scope=_SCOPE, parent=MMDET_METRICS,
                   locations=['mmens.evaluation.subset_coco_metric'])

# mmens adds nothing to the other nodes; each exists so that the 'mmens' scope finds
# mmdet's and mmengine's modules through it
RUNNER_CONSTRUCTORS = Registry('runner constructor', scope=_SCOPE,
                               parent=MMDET_RUNNER_CONSTRUCTORS, locations=[])
LOG_PROCESSORS = Registry('log_processor', scope=_SCOPE, parent=MMDET_LOG_PROCESSORS,
                          locations=[])
DATA_SAMPLERS = Registry('data sampler', scope=_SCOPE, parent=MMDET_DATA_SAMPLERS,
                         locations=[])
WEIGHT_INITIALIZERS = Registry('weight initializer', scope=_SCOPE,
                               parent=MMDET_WEIGHT_INITIALIZERS, locations=[])
TASK_UTILS = Registry('task util', scope=_SCOPE, parent=MMDET_TASK_UTILS, locations=[])
OPTIMIZERS = Registry('optimizer', scope=_SCOPE, parent=MMDET_OPTIMIZERS, locations=[])
OPTIM_WRAPPERS = Registry('optim_wrapper', scope=_SCOPE, parent=MMDET_OPTIM_WRAPPERS,
                          locations=[])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer constructor', scope=_SCOPE,
                                      parent=MMDET_OPTIM_WRAPPER_CONSTRUCTORS, locations=[])
PARAM_SCHEDULERS = Registry('parameter scheduler', scope=_SCOPE,
                            parent=MMDET_PARAM_SCHEDULERS, locations=[])
EVALUATOR = Registry('evaluator', scope=_SCOPE, parent=MMDET_EVALUATOR, locations=[])
VISUALIZERS = Registry('visualizer', scope=_SCOPE, parent=MMDET_VISUALIZERS, locations=[])
VISBACKENDS = Registry('vis_backend', scope=_SCOPE, parent=MMDET_VISBACKENDS, locations=[])
