"""e2e-CEL: per-image member selection through a perturbed knapsack, then WBF of the chosen."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmens.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from mmens.ops import FUSION_METHODS, PackedDetections
from mmens.ops.clustering import Clusters, match_boxes
from mmens.ops.knapsack import PerturbedSelector
from mmens.ops.perturbed_loss import perturbed_loss_grad, perturbed_loss_surrogate
from mmens.ops.ranking import pairwise_rank_loss, rank_loss_deltas, rank_pairs
from mmens.ops.selected_fusion import selected_fusion
from mmens.ops.selection_features import selection_features
from ..utils import cluster_targets, select_members
from .base_ensemble import BaseEnsembleDetector
from .cel_train_cfg import cel_train_cfg
from .cel_warm_start import (SubsetEvaluator, best_fixed_subset, broadcast_subset,
                             warm_start_scores)


@MODELS.register_module()
class CELDetector(BaseEnsembleDetector):
    """e2e-CEL ensemble: a selection net picks members per image, WBF fuses the chosen ones.

    Training (members frozen; cached or live): all members' boxes are matched once into
    clusters; the selection net scores each image's members (ĉ), the perturbed selector
    turns ĉ into a selection x that multiplies the member mask, and the loss is that of the
    fused output of the selected members (docs/theory.md §5.4): a ranking surrogate of AP
    (or BCE) of the fused score against match/no-match with the ground truth, plus an L1 box
    term and an anchor to the warm start. ĉ starts at the best fixed subset of the training
    images (:meth:`warm_start`, by the AP of ``subset_evaluator``, which
    :class:`mmens.engine.CELWarmStartHook` sets before training) and gets the gradient of
    each image's expected loss over perturbed selections (default), or the perturbed
    optimizer's Jacobian (``train_cfg.selection_grad='jacobian'``; docs/theory.md §5.3).
    Inference: hard selection, then WBF of the selected members' boxes only (live members
    with an image-only net: unselected members are not run); :meth:`predict` puts each
    image's selection in its sample's metainfo.

    Args:
        members (Sequence[str | dict]): member names (cached predictions) or live members
            (see :class:`BaseEnsembleDetector`, with ``save_members``, ``test_cfg``,
            ``data_preprocessor``).
        selection_net (dict): e.g. ``MemberSelectionNet``; ``num_members`` is filled in.
        selector (dict): ``PerturbedSelector`` arguments: ``k`` (unit costs), or
            ``budget`` (seconds per image) with ``member_seconds`` as costs;
            ``num_samples``, ``sigma``, ``noise``, ``hard``, ``seed``.
        member_seconds (Sequence[float], optional): each member's measured seconds per
            image (``members.json``), the knapsack costs and the reported compute.
        fusion_cfg (dict): WBF ``iou_thr``, ``skip_box_thr``, ``conf_type``, ``weights``.
        train_cfg (dict): the loss and how ĉ learns; every key, its default and meaning
            in :mod:`.cel_train_cfg`.
    """

    def __init__(self, members: Sequence[Union[str, dict]], selection_net: dict,
                 selector: dict, member_seconds: Optional[Sequence[float]] = None,
                 fusion_cfg: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 save_members: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(members, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         save_members=save_members, init_cfg=init_cfg)
        n = self.num_members
        self.selection_net = MODELS.build(dict(selection_net, num_members=n))
        selector = dict(selector)
        if member_seconds is not None and len(member_seconds) != n:
            raise ValueError(f'CELDetector: member_seconds has {len(member_seconds)} values '
                             f'for {n} members')
        if 'budget' in selector:
            if member_seconds is None:
                raise ValueError('CELDetector: a time budget needs member_seconds')
            selector.setdefault('costs', list(member_seconds))
        self.selector = PerturbedSelector(**selector)
        self.selector_cfg = {k: v for k, v in selector.items()  # all but the budget
                             if k not in ('k', 'costs', 'budget')}
        self.register_buffer('member_seconds', torch.as_tensor(
            member_seconds if member_seconds is not None else [1.0] * n,
            dtype=torch.float32), persistent=False)
        # the unit costs above stand in for k-selection only: a time budget needs real ones
        self.has_member_seconds = member_seconds is not None
        self.fusion_cfg = dict(dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
                               **(fusion_cfg or {}))
        self.register_member_weights(self.fusion_cfg.pop('weights', None))
        self.train_cfg = cel_train_cfg(train_cfg)
        # set once the warm start is computed; saved, so that resuming does not redo it
        self.register_buffer('warm_started', torch.tensor(False))
        # injected (CELWarmStartHook): models do not import the evaluation layer
        self.subset_evaluator: Optional[SubsetEvaluator] = None

    def set_budget(self, k: Optional[int] = None, budget: Optional[float] = None) -> None:
        """Select ``k`` members per image, or members costing at most ``budget`` seconds
        per image (``member_seconds``), from now on (e.g. one trained model at several
        budgets)."""
        if (k is None) == (budget is None):
            raise ValueError('CELDetector.set_budget: give exactly one of k or budget')
        if budget is not None and not self.has_member_seconds:
            raise ValueError('CELDetector.set_budget: a time budget needs each member\'s '
                             'seconds per image (member_seconds), and this model has none')
        if k is not None:
            self.selector = PerturbedSelector(k=k, **self.selector_cfg)
        else:
            self.selector = PerturbedSelector(costs=self.member_seconds.cpu(), budget=budget,
                                              **self.selector_cfg)
        self.selector.to(self.member_seconds.device)

    # -- features and selection --------------------------------------------------------
    def extract_feat(self, batch_inputs: dict) -> Clusters:
        """Clusters of all members' boxes (no gradient)."""
        with torch.no_grad():
            return match_boxes(PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
                               weights=self.weights, **self.fusion_cfg)

    def selection_inputs(self, batch_inputs: dict, clusters: Optional[Clusters] = None
                         ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """What the selection net reads: meta-features ``[B, 4N + 2]`` (from ``clusters``)
        and/or the preprocessed images ``[B, 3, H, W]``; None for what it does not use."""
        meta = img = None
        if self.selection_net.use_meta:
            meta = selection_features(clusters.y_hat, clusters.mask, clusters.counts,
                                      clusters.image_index,
                                      batch_inputs['image_sizes'].shape[0])
        if self.selection_net.backbone is not None:
            img = batch_inputs.get('img')
            if isinstance(img, (list, tuple)):
                img = torch.stack([i.float() for i in img])
        return meta, img

    def member_scores(self, batch_inputs: dict,
                      clusters: Optional[Clusters] = None) -> Tensor:
        """ĉ ``[B, N]`` of the selection net (``clusters`` are needed for meta-features)."""
        return self.selection_net(*self.selection_inputs(batch_inputs, clusters))

    def select(self, batch_inputs: dict) -> Tuple[Tensor, dict]:
        """Hard selection ``[B, N]`` (0/1) of each image's members (inference), and the batch
        with the member predictions (live members: only the selected ones are run when the
        selection net reads images only)."""
        if self.selection_net.image_only:
            x = self.selector.exact(self.member_scores(batch_inputs))
            return x, self.with_member_predictions(batch_inputs, selection=x)
        batch_inputs = self.with_member_predictions(batch_inputs)
        clusters = self.extract_feat(batch_inputs)
        x = self.selector.exact(self.member_scores(batch_inputs, clusters))
        return x, batch_inputs

    # -- loss (BaseEnsembleDetector.loss: loss_by_feat of loss_inputs) -----------------
    @torch.no_grad()
    def loss_inputs(self, batch_inputs: dict, batch_data_samples: SampleList) -> tuple:
        """What :meth:`loss_by_feat` takes: the clusters of all members, their targets, the
        meta-features ``[B, F]`` (or None) and the images (or None). None of it depends on
        the selection, so a full-batch loop computes it once. The first call also sets the
        warm start (``train_cfg.warm_start``) from this batch: with
        ``FullBatchTrainLoop``, all the training images."""
        batch_inputs = self.with_member_predictions(batch_inputs)
        if self.train_cfg['warm_start'] and not bool(self.warm_started):
            self.warm_start(batch_inputs, batch_data_samples)
        clusters = self.extract_feat(batch_inputs)
        targets = cluster_targets(clusters, batch_data_samples, batch_inputs['image_sizes'],
                                  self.train_cfg['iou_thr'])
        return (clusters, targets) + self.selection_inputs(batch_inputs, clusters)

    @torch.no_grad()
    def warm_start(self, batch_inputs: dict, batch_data_samples: SampleList) -> None:
        """Start ĉ at the best fixed subset of these images by COCO AP (±gap/2; see
        :mod:`.cel_warm_start`) and anchor it there. Sets ``warm_start_subset`` (member
        indices) and ``warm_start_ap``."""
        if self.subset_evaluator is None:
            raise ValueError("CELDetector: train_cfg.warm_start needs the AP of each fixed "
                             "subset: add dict(type='CELWarmStartHook') to custom_hooks, or "
                             'set train_cfg.warm_start=False')
        subset, ap = best_fixed_subset(self, batch_inputs, batch_data_samples,
                                       self.subset_evaluator)
        subset = broadcast_subset(subset, self.num_members, self.warm_started.device)
        self.selection_net.set_init_scores(warm_start_scores(
            subset, self.num_members, self.train_cfg['warm_start_gap']))
        self.warm_started.fill_(True)
        self.warm_start_subset, self.warm_start_ap = subset, ap
        from mmengine.logging import print_log
        print_log(f'e2e-CEL warm start: best fixed subset of the '
                  f'{batch_inputs["image_sizes"].shape[0]} training images: '
                  f'{[self.members[i] for i in subset]} (AP {100 * ap:.1f})', 'current')

    def loss_by_feat(self, clusters: Clusters, targets, meta: Optional[Tensor],
                     img: Optional[Tensor]) -> Dict[str, Tensor]:
        """The loss of the selected members' fused output (docs/theory.md §5.4), plus the
        anchor of ĉ to its warm start.

        'perturbed_loss' (default): the loss of the exact selection is reported, and ĉ gets
        the gradient of each image's expected loss under perturbation (docs/theory.md §5.3)
        as ``loss_select`` (0). 'jacobian': the loss of the selector's output x,
        differentiated through the perturbed optimizer (docs/theory.md §5.3).
        """
        c_hat = self.selection_net(meta, img)  # [B, N]
        if self.train_cfg['selection_grad'] == 'perturbed_loss':
            s = self.selector
            scores = F.normalize(c_hat, p=2.0, dim=-1) if s.l2_normalize else c_hat
            grad, x, _ = perturbed_loss_grad(
                scores.detach(), s.solve,
                lambda base, cand: self.selection_loss_deltas(clusters, targets, base, cand),
                s.num_samples, s.sigma, s.noise, s.generator(scores.device))
            with torch.no_grad():
                losses = self.selection_loss(clusters, targets, x)
            losses['loss_select'] = perturbed_loss_surrogate(scores, grad)
        else:
            x = self.selector(c_hat)  # [B, N]
            losses = self.selection_loss(clusters, targets, x)
        if self.train_cfg['anchor'] > 0:  # keep ĉ near its warm start unless the loss pays
            losses['loss_anchor'] = self.train_cfg['anchor'] * (
                c_hat - self.selection_net.init_scores).pow(2).mean()
        return {**losses,
                'members_selected': x.detach().sum(1).mean(),
                'member_seconds': (x.detach() @ self.member_seconds).mean()}

    def cluster_terms(self, clusters: Clusters, targets, select: Tensor
                      ) -> Tuple[Optional[Tensor], Tensor, Tensor, Tensor]:
        """The fused scores ``[..., C]`` of the selection ``select [..., B, N]`` and the
        per-cluster terms of the loss: ``loss_cls`` ``[..., C]`` (None for 'rank', which
        is not a sum over clusters) and ``loss_box`` ``[..., P]`` (L1 of the fused boxes of
        the P matched clusters ``pos_index``; the other clusters' term is 0), so that each
        loss is the sum of its terms. Returns ``(cls, box, pos_index, scores)``."""
        keep = (~targets.ignored).to(clusters.y_hat.dtype)  # [C]
        pos = targets.y_cls * keep  # [C]
        pos_index = pos.nonzero().flatten()  # [P]
        boxes, scores = selected_fusion(clusters, select, self.weights,
                                        box_index=pos_index)  # [..., P, 4], [..., C]
        box = (boxes - targets.y_box[pos_index]).abs().sum(-1) * pos[pos_index] * (
            self.train_cfg['loss_box'] / pos.sum().clamp_min(1.0))  # [..., P]
        if self.train_cfg['loss_cls'] == 'rank':
            return None, box, pos_index, scores
        bce = F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6),
                                     targets.y_cls.expand_as(scores), reduction='none')
        return bce * keep / keep.sum().clamp_min(1.0), box, pos_index, scores

    def selection_loss(self, clusters: Clusters, targets, x: Tensor) -> Dict[str, Tensor]:
        """``loss_cls`` and ``loss_box`` of the fused output of the selection ``x [B, N]``
        (hard or soft; differentiable in ``x``)."""
        cls, box, _, scores = self.cluster_terms(clusters, targets, x)
        if cls is None:  # AP's ranking of matched above unmatched, per class
            cls = pairwise_rank_loss(scores, targets.y_cls, clusters.labels, ~targets.ignored,
                                     tau=self.train_cfg['rank_tau'],
                                     class_balanced=True)
        return {'loss_cls': cls.sum(), 'loss_box': box.sum()}

    @torch.no_grad()
    def selection_loss_deltas(self, clusters: Clusters, targets, base: Tensor,
                              candidates: Tensor) -> Tensor:
        """``[U, B]``: loss (``loss_cls + loss_box``) with image b alone selecting
        ``candidates[u]`` (``[U, N]``) and every other image ``base`` (``[B, N]``), minus the
        loss at ``base``. Only image b's clusters (and, for 'rank', their pairs) change."""
        u, b = candidates.shape[0], base.shape[0]
        select = torch.cat([base[None], candidates[:, None, :].expand(u, b, -1)])  # [U+1,B,N]
        cls, box, pos_index, scores = self.cluster_terms(clusters, targets, select)
        out = box.new_zeros(u, b).index_add_(1, clusters.image_index[pos_index],
                                             box[1:] - box[:1])
        if cls is not None:
            out.index_add_(1, clusters.image_index, cls[1:] - cls[:1])
        else:
            pairs = rank_pairs(targets.y_cls, clusters.labels, ~targets.ignored,
                               class_balanced=True)
            out += rank_loss_deltas(scores[0], scores[1:], clusters.image_index, b, pairs,
                                    tau=self.train_cfg['rank_tau'])
        return out

    def fuse(self, batch_inputs: dict) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Select per image, then WBF of the selected members' boxes only: ``boxes [K, 4]``
        (normalised), ``scores [K]``, ``labels [K]``, ``images [K]``."""
        return self.fuse_with_metainfo(batch_inputs)[0]

    def fuse_with_metainfo(self, batch_inputs: dict
                           ) -> Tuple[Tuple[Tensor, Tensor, Tensor, Tensor], Dict[str, Tensor]]:
        """:meth:`fuse`, and each image's ``selected_members`` (``Tensor[B, N]`` bool) and
        their ``member_seconds`` (``Tensor[B]``): what :meth:`predict` puts in the samples'
        metainfo."""
        x, batch_inputs = self.select(batch_inputs)  # [B, N]
        x = x.detach()
        return self.fuse_selection(batch_inputs, x), dict(
            selected_members=x > 0.5, member_seconds=x @ self.member_seconds)

    def fuse_selection(self, batch_inputs: dict, x: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """WBF of the boxes of the members ``x [B, N]`` (0/1) selects, per image."""
        sub = select_members({k: batch_inputs[k] for k in (
            'bboxes', 'scores', 'labels', 'members', 'images', 'image_sizes')}, x)
        return FUSION_METHODS['wbf'](PackedDetections.from_batch_inputs(sub, self.num_members),
                                     weights=self.weights, **self.fusion_cfg)
