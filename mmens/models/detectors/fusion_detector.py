"""Fixed (not learned) fusion of cached member predictions: WBF, NMS, soft-NMS, NMW."""
from typing import Optional, Sequence, Tuple, Union

from mmens.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops import FUSION_METHODS, PackedDetections
from .base_ensemble import BaseEnsembleDetector


@MODELS.register_module()
class FusionDetector(BaseEnsembleDetector):
    """An ensemble detector that fuses its members' boxes with a fixed rule.

    The members' predictions come in through :class:`EnsembleDataPreprocessor` as one flat
    batch; fusion runs on the whole batch at once (see :mod:`mmens.ops`) with
    ensemble-boxes semantics.

    Args:
        members (Sequence[str | dict]): member names or live members (see
            :class:`BaseEnsembleDetector`, with ``save_members``, ``test_cfg``,
            ``data_preprocessor``).
        method (str): ``'wbf'``, ``'nms'``, ``'soft_nms'`` or ``'nmw'``.
        fusion_cfg (dict): keyword arguments of the method, as in ensemble-boxes
            (``iou_thr``, ``skip_box_thr``, ``conf_type``, ``weights`` ([N]), ``sigma``, ...).
    """

    def __init__(self, members: Sequence[Union[str, dict]], method: str = 'wbf',
                 fusion_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, save_members: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        if method not in FUSION_METHODS:
            raise ValueError(f'FusionDetector: unknown method {method!r}; choose one of '
                             f'{sorted(FUSION_METHODS)}')
        super().__init__(members, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         save_members=save_members, init_cfg=init_cfg)
        self.method = method
        self.fusion_cfg = dict(fusion_cfg or {})
        self.register_member_weights(self.fusion_cfg.pop('weights', None))

    def extract_feat(self, batch_inputs: dict) -> dict:
        """The members' predictions are this detector's features."""
        return batch_inputs

    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch: returns ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]``."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        return FUSION_METHODS[self.method](
            PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
            weights=self.weights, **self.fusion_cfg)

    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        raise ValueError(f"FusionDetector('{self.method}') is a fixed rule with nothing to "
                         'train: evaluate it with tools/test.py, or train a learned '
                         'ensemble (configs/learned/)')
