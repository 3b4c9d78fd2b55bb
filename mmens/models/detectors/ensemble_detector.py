"""Learned ensemble of cached member predictions: matching → learned fusion head."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from mmengine.logging import MMLogger
from mmens.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops.clustering import CONF_TYPES, Clusters, match_boxes
from mmens.ops.packed import PackedDetections
from ..utils import cluster_targets
from .base_ensemble import BaseEnsembleDetector
from .fusion_search import FusionSearch, search_fusion


@MODELS.register_module()
class EnsembleDetector(BaseEnsembleDetector):
    """Matching of the members' boxes into clusters Ŷ, then a learned fusion head.

    The members are frozen (their predictions are cached, or see the live variant): only
    the head learns. The matching is the WBF clustering of :func:`mmens.ops.match_boxes`,
    with the head's learned member weights.

    WBF's ``iou_thr``, ``skip_box_thr`` and ``conf_type`` are buffers (saved in
    checkpoints), set from ``matching`` or, when a :class:`FusionSearch` is set
    (``fusion_search``, by :class:`mmens.engine.FusionSearchHook`), chosen by inner
    cross-validation on the training images before the first step
    (:mod:`.fusion_search`). ``skip_box_thr`` compares the raw scores, as ensemble-boxes
    does; the training clusters use every box.

    Args:
        members (Sequence[str | dict]): member names or live members (see
            :class:`BaseEnsembleDetector`, with ``save_members``, ``test_cfg``,
            ``data_preprocessor``).
        head (dict): head config (e.g. ``LearnedFusionHead``); ``num_members`` is filled in.
        matching (dict): ``match_boxes`` options (``iou_thr``, ``skip_box_thr``,
            ``conf_type``, ``member_reduce``, ``class_agnostic``).
        train_cfg (dict): ``iou_thr`` of the target assignment (default 0.5).
    """

    def __init__(self, members: Sequence[Union[str, dict]], head: dict,
                 matching: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 save_members: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(members, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         save_members=save_members, init_cfg=init_cfg)
        self.head = MODELS.build(dict(head, num_members=self.num_members))
        matching = dict(dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
                        **(matching or {}))
        if matching['conf_type'] not in CONF_TYPES:
            raise ValueError(f"EnsembleDetector: matching.conf_type must be one of "
                             f"{CONF_TYPES}, got {matching['conf_type']!r}")
        self.register_buffer('fusion_iou_thr', torch.tensor(float(matching.pop('iou_thr')),
                                                           dtype=torch.float64))
        self.register_buffer('fusion_skip_box_thr',
                             torch.tensor(float(matching.pop('skip_box_thr')),
                                          dtype=torch.float64))
        self.register_buffer('fusion_conf_type',
                             torch.tensor(CONF_TYPES.index(matching.pop('conf_type'))))
        # set once the search has run: resuming does not redo it
        self.register_buffer('fusion_searched', torch.tensor(False))
        self.matching = matching  # the other match_boxes options
        self.train_cfg = dict(dict(iou_thr=0.5), **(train_cfg or {}))
        self.fusion_search: Optional[FusionSearch] = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint saved before the thresholds were buffers was trained and tested
        # with its config's matching values: those are its thresholds
        for name in ('fusion_iou_thr', 'fusion_skip_box_thr', 'fusion_conf_type',
                     'fusion_searched'):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fusion_cfg(self) -> dict:
        """WBF's ``iou_thr``, ``skip_box_thr`` and ``conf_type`` (Python values)."""
        return dict(iou_thr=float(self.fusion_iou_thr),
                    skip_box_thr=float(self.fusion_skip_box_thr),
                    conf_type=CONF_TYPES[int(self.fusion_conf_type)])

    def set_fusion_cfg(self, iou_thr: float, skip_box_thr: float, conf_type: str) -> None:
        """Set the three fusion thresholds (e.g. chosen by a search)."""
        self.fusion_iou_thr.fill_(float(iou_thr))
        self.fusion_skip_box_thr.fill_(float(skip_box_thr))
        self.fusion_conf_type.fill_(CONF_TYPES.index(conf_type))

    @torch.no_grad()
    def match(self, packed: dict, head, iou_thr: float, skip_box_thr: float,
              conf_type: str) -> Clusters:
        """The clusters of a packed batch (pixel boxes, ``image_sizes``) with ``head``'s
        matching weights: boxes whose score is below ``skip_box_thr`` are left out
        (``box_cluster`` -1) in inference mode only (training sees every box)."""
        dets = PackedDetections.from_batch_inputs(packed, self.num_members)
        keep = None
        if skip_box_thr > 0 and not head.training:
            keep = torch.nonzero(dets.scores >= skip_box_thr).flatten()  # [M']
            dets = dets._replace(**{k: getattr(dets, k)[keep] for k in
                                    ('boxes', 'scores', 'labels', 'members', 'images')})
        clusters = match_boxes(dets, weights=head.matching_weights(), iou_thr=iou_thr,
                               skip_box_thr=0.0, conf_type=conf_type, **self.matching)
        if keep is not None:  # box_cluster indexes the boxes given
            full = torch.full_like(packed['members'], -1)
            clusters = clusters._replace(box_cluster=full.index_copy_(
                0, keep, clusters.box_cluster))
        return clusters

    def extract_feat(self, batch_inputs: dict):
        """Match the members' boxes of a packed batch into clusters (no gradient)."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        return self.match(batch_inputs, self.head, **self.fusion_cfg())

    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse a packed batch: ``boxes [K, 4]`` (normalised), ``scores [K]``,
        ``labels [K]``, ``images [K]`` (the head's ``predict_by_feat`` of the clusters)."""
        clusters = self.extract_feat(batch_inputs)
        boxes, scores = self.head.predict_by_feat(clusters)
        return boxes, scores, clusters.labels, clusters.image_index

    @torch.no_grad()
    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        """The clusters of a batch and their targets: what ``head.loss_by_feat`` takes
        (after the threshold search, when one is set and has not run yet)."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        if self.fusion_search is not None and not bool(self.fusion_searched):
            self.run_fusion_search(batch_inputs, batch_data_samples)
        clusters = self.extract_feat(batch_inputs)
        return clusters, cluster_targets(clusters, batch_data_samples,
                                         batch_inputs['image_sizes'], self.train_cfg['iou_thr'])

    def run_fusion_search(self, batch_inputs: dict, batch_data_samples: SampleList) -> None:
        """Choose the fusion thresholds by :func:`search_fusion`, log them and set them
        (rank 0's choice on every process: each sees only its shard of the images)."""
        if not hasattr(self.head, 'fit_clusters'):
            raise ValueError(f'EnsembleDetector: the threshold search needs a head with '
                             f'fit_clusters (LearnedWeightsHead), not '
                             f'{type(self.head).__name__}; remove FusionSearchHook')
        chosen, table = search_fusion(self, batch_inputs, batch_data_samples,
                                      self.fusion_search)
        self.set_fusion_cfg(**chosen)
        if dist.is_available() and dist.is_initialized():
            for buf in (self.fusion_iou_thr, self.fusion_skip_box_thr,
                        self.fusion_conf_type):
                dist.broadcast(buf, 0)
        self.fusion_searched.fill_(True)
        best = max(ap for _, ap in table)
        MMLogger.get_current_instance().info(
            f'fusion thresholds by {self.fusion_search.num_folds}-fold inner CV on '
            f'{batch_inputs["image_sizes"].shape[0]} images ({len(table)} candidates): '
            f'{self.fusion_cfg()} (inner-CV AP {100 * best:.1f})')

    def loss_by_feat(self, clusters, targets) -> Dict[str, Tensor]:
        """The head's losses (only the head learns)."""
        return self.head.loss_by_feat(clusters, targets)
