"""What the ensemble detectors share: their members, and mmdet's detector contracts."""
from abc import ABCMeta, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.structures import SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ..live_members import parse_members, register_members, with_member_predictions
from ..utils import split_results

#: ``test_cfg`` of every ensemble detector, unless its config overrides a key
DEFAULT_TEST_CFG = dict(max_per_img=100, score_thr=0.0)


class BaseEnsembleDetector(BaseDetector, metaclass=ABCMeta):
    """Base class of the detectors that fuse the boxes of N frozen members.

    The members' predictions come in through :class:`EnsembleDataPreprocessor` as one
    flat packed batch (cached predictions read by the dataset), or the members run here on
    the raw images (live members, frozen and, unless ``save_members``, not submodules:
    as the teacher of mmdet's ``kd_one_stage.py``). A subclass implements:

    - :meth:`fuse`: a packed batch to the fused ``boxes [K, 4]`` (normalised xyxy),
      ``scores [K]``, ``labels [K]``, ``images [K]`` of the whole batch. ``predict`` is
      ``fuse`` then :meth:`predict_by_feat` (one ``InstanceData`` per image, in pixels),
      ``_forward`` is ``fuse``.
    - if it learns, :meth:`loss_inputs` (what does not change while it learns, e.g. the
      clusters of the members' boxes and their targets; a full-batch loop computes it
      once) and :meth:`loss_by_feat` of those: ``loss`` is the one of the other.
    - :meth:`extract_feat`, as mmdet's ``BaseDetector`` asks.

    Args:
        members (Sequence[str | dict]): member names in the dataset's order (N = their
            number), or live members ``dict(config=..., checkpoint=...)`` run on the raw
            images (see :class:`mmens.models.LiveMembers`).
        test_cfg (dict): ``max_per_img`` (default 100) and ``score_thr`` (default 0).
        data_preprocessor (dict): defaults to ``EnsembleDataPreprocessor``.
        save_members (bool): live members only: keep their weights in the ensemble's
            checkpoints (default: not saved, as mmdet's ``kd_one_stage`` teacher).
        init_cfg (dict, optional): as mmengine's ``BaseModule``.
    """

    #: whether it fuses the instance masks of live members (else they are not packed)
    fuses_masks = False

    def __init__(self, members: Sequence[Union[str, dict]], test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, save_members: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or dict(type='EnsembleDataPreprocessor'),
            init_cfg=init_cfg)
        self.members, self.live_members = parse_members(members)
        if self.live_members is not None and not self.fuses_masks:
            self.live_members.boxes_only_for = type(self).__name__
        register_members(self, self.live_members, save_members)
        self.num_members = len(self.members)
        self.test_cfg = dict(DEFAULT_TEST_CFG, **(test_cfg or {}))

    def register_member_weights(self, weights: Optional[Sequence[float]]) -> None:
        """The ``weights`` buffer ``[N]`` of the fusion (``fusion_cfg.weights``; default all
        1), not saved in checkpoints (it comes from the config)."""
        if weights is not None and len(weights) != self.num_members:
            raise ValueError(f'{type(self).__name__}: fusion_cfg.weights has {len(weights)} '
                             f'values for {self.num_members} members')
        self.register_buffer(
            'weights', torch.ones(self.num_members) if weights is None else
            torch.as_tensor(weights, dtype=torch.float32), persistent=False)

    def with_member_predictions(self, batch_inputs: dict,
                                selection: Optional[Tensor] = None) -> dict:
        """``batch_inputs`` with the packed member predictions: as they are for cached
        members, else the live members' (only the selected ones with ``selection``
        ``[B, N]``)."""
        return with_member_predictions(self.live_members, batch_inputs, selection=selection)

    # -- predict -----------------------------------------------------------------------
    @abstractmethod
    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch: ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]``."""

    def _forward(self, batch_inputs: dict, batch_data_samples: SampleList = None
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.fuse(batch_inputs)

    def fuse_with_metainfo(self, batch_inputs: dict
                           ) -> Tuple[Tuple[Tensor, Tensor, Tensor, Tensor], Dict[str, Tensor]]:
        """:meth:`fuse`, and what the fusion decided per image as ``Tensor[B, ...]`` by
        metainfo key (e.g. e2e-CEL's selection); by default nothing."""
        return self.fuse(batch_inputs), {}

    def predict(self, batch_inputs: dict, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Fused detections as ``pred_instances`` of the data samples, in the pixels of the
        raw images (the members' boxes are, so ``rescale`` changes nothing), and the
        per-image output of :meth:`fuse_with_metainfo` in each sample's metainfo (as
        Python values)."""
        fused, info = self.fuse_with_metainfo(batch_inputs)
        results = self.predict_by_feat(*fused, batch_inputs['image_sizes'])
        samples = self.add_pred_to_datasample(batch_data_samples, results)
        columns = {key: value.tolist() for key, value in info.items()}  # one sync per key
        for b, sample in enumerate(samples):
            sample.set_metainfo({key: column[b] for key, column in columns.items()})
        return samples

    def predict_by_feat(self, boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor,
                        image_sizes: Tensor) -> List[InstanceData]:
        """The output of :meth:`fuse` as one ``InstanceData`` per image (``image_sizes``
        ``[B, 2]``), with ``test_cfg`` applied (see :func:`mmens.models.utils.split_results`)."""
        return split_results(boxes, scores, labels, images, image_sizes, **self.test_cfg)

    # -- loss --------------------------------------------------------------------------
    def loss(self, batch_inputs: dict, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        return self.loss_by_feat(*self.loss_inputs(batch_inputs, batch_data_samples))

    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        """What :meth:`loss_by_feat` takes, for a batch (no gradient)."""
        raise NotImplementedError(f'{type(self).__name__} does not learn')

    def loss_by_feat(self, *inputs) -> Dict[str, Tensor]:
        """The losses of :meth:`loss_inputs`' output."""
        raise NotImplementedError(f'{type(self).__name__} does not learn')
