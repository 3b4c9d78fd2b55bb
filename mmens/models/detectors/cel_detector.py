"""e2e-CEL: per-image member selection through a perturbed knapsack, then WBF of the chosen."""
import math
import time
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
from mmens.ops.selection_features import probe_features, selection_features
from ..live_members import add_member_predictions
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
    Inference: hard selection, then WBF of the selected members' boxes only;
    :meth:`predict` puts each image's selection and its cost in its sample's metainfo.

    The cost model: the selection may read the image and the detections of the ``probes``,
    which run on every image and are charged on every image; the other members run only
    when selected (live members: an unselected member is never called). The cost of an
    image is the seconds of the members run (probes and selected) plus
    ``selection_seconds``, the selection's own measured time (features, net and knapsack
    on one image; :meth:`measure_selection_seconds`, saved in the checkpoint). Under a
    budget the knapsack chooses among all members within ``budget`` minus the probes and
    the selection, a probe costing 0 there (it has run: choosing it means fusing its
    boxes). A selection net that reads every member (``use_meta=True``) is an accuracy
    mode for ``k``: its cost is every member, and a budget refuses it.

    Args:
        members (Sequence[str | dict]): member names (cached predictions) or live members
            (see :class:`BaseEnsembleDetector`, with ``save_members``, ``test_cfg``,
            ``data_preprocessor``).
        selection_net (dict): e.g. ``MemberSelectionNet``; ``num_members`` and
            ``num_probes`` are filled in.
        selector (dict): ``PerturbedSelector`` arguments: ``k`` (unit costs), or
            ``budget`` (seconds per image) with ``member_seconds`` as costs;
            ``num_samples``, ``sigma``, ``noise``, ``hard``, ``seed``.
        member_seconds (Sequence[float], optional): each member's measured seconds per
            image (``members.json``), the knapsack costs and the reported compute.
        probes (Sequence[str], optional): names of the members run on every image, whose
            detections the selection net reads (e.g. ``['yolofastestv2-352']``).
        fusion_cfg (dict): WBF ``iou_thr``, ``skip_box_thr``, ``conf_type``, ``weights``.
        train_cfg (dict): the loss and how ĉ learns; every key, its default and meaning
            in :mod:`.cel_train_cfg`.
    """

    def __init__(self, members: Sequence[Union[str, dict]], selection_net: dict,
                 selector: dict, member_seconds: Optional[Sequence[float]] = None,
                 probes: Optional[Sequence[str]] = None, fusion_cfg: Optional[dict] = None,
                 train_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 save_members: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(members, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         save_members=save_members, init_cfg=init_cfg)
        n = self.num_members
        unknown = [p for p in probes or [] if p not in self.members]
        if unknown or len(set(probes or [])) != len(probes or []):
            raise ValueError(f'CELDetector: probes {list(probes)} must be distinct members '
                             f'of {list(self.members)}')
        self.probes = tuple(self.members.index(p) for p in probes or [])
        self.register_buffer('probe_mask', torch.zeros(n, dtype=torch.bool).index_fill_(
            0, torch.tensor(self.probes, dtype=torch.long), True), persistent=False)
        self.selection_net = MODELS.build(dict(selection_net, num_members=n,
                                               num_probes=len(self.probes)))
        selector = dict(selector)
        if member_seconds is not None and len(member_seconds) != n:
            raise ValueError(f'CELDetector: member_seconds has {len(member_seconds)} values '
                             f'for {n} members')
        if 'budget' in selector and 'k' in selector:
            raise ValueError('CELDetector: give the selector k or budget, not both')
        if 'budget' in selector and member_seconds is None:
            raise ValueError('CELDetector: a time budget needs member_seconds')
        self.selector_cfg = {k: v for k, v in selector.items()  # all but the budget
                             if k not in ('k', 'costs', 'budget')}
        self.register_buffer('member_seconds', torch.as_tensor(
            member_seconds if member_seconds is not None else [1.0] * n,
            dtype=torch.float32), persistent=False)
        # the unit costs above stand in for k-selection only: a time budget needs real ones
        self.has_member_seconds = member_seconds is not None
        self.budget = selector.get('budget')
        self.check_budget_reads(self.budget)
        # the selection's own seconds per image, charged on every image; saved, so that a
        # checkpoint keeps its fit-time measure (the selector is rebuilt on loading it)
        self.register_buffer('selection_seconds', torch.tensor(0.0))
        self.selector = self.make_selector(selector.get('k'), self.budget)
        self.fusion_cfg = dict(dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'),
                               **(fusion_cfg or {}))
        self.register_member_weights(self.fusion_cfg.pop('weights', None))
        self.train_cfg = cel_train_cfg(train_cfg)
        # set once the warm start is computed; saved, so that resuming does not redo it
        self.register_buffer('warm_started', torch.tensor(False))
        # injected (CELWarmStartHook): models do not import the evaluation layer
        self.subset_evaluator: Optional[SubsetEvaluator] = None
        self.selection_seconds.fill_(self.measure_selection_seconds())
        self.selector = self.make_selector(selector.get('k'), self.budget)

    def check_budget_reads(self, budget: Optional[float]) -> None:
        """A time budget's selection may read only the image and the probes."""
        if budget is not None and self.selection_net.use_meta:
            raise ValueError('CELDetector: a time budget cannot pay for a selection that '
                             'reads every member (selection_net.use_meta=True): read probes '
                             "(probes=['yolofastestv2-352'], use_meta=False) or select k")

    def make_selector(self, k: Optional[int], budget: Optional[float]) -> PerturbedSelector:
        """The selector of ``k`` members, or of the members within ``budget`` less the
        probes and the selection (a probe costs 0 there: it has already run)."""
        if k is not None or budget is None:  # (neither: PerturbedSelector says so)
            return PerturbedSelector(k=k, **self.selector_cfg).to(self.member_seconds.device)
        left = budget - self.probe_seconds - float(self.selection_seconds)
        if left < 0:
            raise ValueError(f'CELDetector: the budget of {budget} s per image is less than '
                             f'the probes ({self.probe_seconds:.4f} s) and the selection '
                             f'({float(self.selection_seconds):.4f} s)')
        costs = self.member_seconds.cpu().masked_fill(self.probe_mask.cpu(), 0.0)
        return PerturbedSelector(costs=costs, budget=left, **self.selector_cfg).to(
            self.member_seconds.device)

    @property
    def probe_index(self) -> Tensor:
        """``LongTensor[P]``: the probes' member indices."""
        return self.probe_mask.nonzero().flatten()

    @property
    def probe_seconds(self) -> float:
        """Seconds per image of the probes."""
        return float(self.member_seconds[self.probe_mask].sum())

    def run_seconds(self, x: Tensor) -> Tensor:
        """``[B]``: each image's cost of the selection ``x [B, N]`` (0/1, or in [0, 1] for
        the expected cost): seconds of the members run plus ``selection_seconds``."""
        run = torch.ones_like(x) if self.selection_net.use_meta else torch.maximum(
            x, self.probe_mask.to(x.dtype))
        return run @ self.member_seconds + self.selection_seconds

    @torch.no_grad()
    def measure_selection_seconds(self, repeats: int = 15) -> float:
        """The median seconds of one image's selection (features, net and exact selector)
        on 100 synthetic boxes per member, rounded up to the millisecond, so that a
        budget's knapsack does not move with timing noise."""
        n, m = self.num_members, 100
        t = torch.linspace(0, 1, n * m, device=self.member_seconds.device)
        x1 = t * 500
        inputs = dict(bboxes=torch.stack([x1, x1 / 2, x1 + 40, x1 / 2 + 60], 1), scores=t,
                      labels=(t * 79).long(), members=torch.arange(n).repeat_interleave(m),
                      images=torch.zeros(n * m, dtype=torch.long),
                      image_sizes=torch.tensor([[640.0, 480.0]]))
        inputs = {k: v.to(t.device) for k, v in inputs.items()}
        if self.selection_net.backbone is not None:
            inputs['img'] = torch.zeros(1, 3, 320, 320, device=t.device)
        training = self.selection_net.training
        self.selection_net.eval()  # no batch-norm statistics move
        times = []
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            clusters = self.extract_feat(inputs) if self.selection_net.use_meta else None
            self.selector.exact(self.member_scores(inputs, clusters))
            times.append(time.perf_counter() - t0)
        self.selection_net.train(training)
        return math.ceil(float(torch.tensor(times[3:]).median()) * 1000) / 1000

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the checkpoint's selection_seconds (its fit-time measure) sets the knapsack budget
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.selector.k is None:
            self.selector = self.make_selector(None, self.budget)

    def set_budget(self, k: Optional[int] = None, budget: Optional[float] = None) -> None:
        """Select ``k`` members per image, or members costing at most ``budget`` seconds
        per image (``member_seconds``), from now on (e.g. one trained model at several
        budgets)."""
        if (k is None) == (budget is None):
            raise ValueError('CELDetector.set_budget: give exactly one of k or budget')
        if budget is not None and not self.has_member_seconds:
            raise ValueError('CELDetector.set_budget: a time budget needs each member\'s '
                             'seconds per image (member_seconds), and this model has none')
        self.check_budget_reads(budget)
        self.selector = self.make_selector(k, budget)
        self.budget = budget

    # -- features and selection --------------------------------------------------------
    def extract_feat(self, batch_inputs: dict) -> Clusters:
        """Clusters of all members' boxes (no gradient)."""
        with torch.no_grad():
            return match_boxes(PackedDetections.from_batch_inputs(batch_inputs, self.num_members),
                               weights=self.weights, **self.fusion_cfg)

    def selection_inputs(self, batch_inputs: dict, clusters: Optional[Clusters] = None
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """What the selection net reads: meta-features ``[B, 4N + 2]`` of every member
        (from ``clusters``), the preprocessed images ``[B, 3, H, W]`` and the probe
        features ``[B, F]`` (of the probes' rows of the batch only); None for what it does
        not use."""
        meta = img = probe = None
        if self.probes:
            probe = self.probe_inputs(batch_inputs)
        if self.selection_net.use_meta:
            meta = selection_features(clusters.y_hat, clusters.mask, clusters.counts,
                                      clusters.image_index,
                                      batch_inputs['image_sizes'].shape[0])
        if self.selection_net.backbone is not None:
            img = batch_inputs.get('img')
            if isinstance(img, (list, tuple)):
                img = torch.stack([i.float() for i in img])
        return meta, img, probe

    def probe_inputs(self, batch_inputs: dict) -> Tensor:
        """:func:`probe_features` of the batch's probe rows (a label beyond the net's
        class histogram is a ValueError)."""
        num_classes = self.selection_net.num_classes
        labels = batch_inputs['labels'][self.probe_mask[batch_inputs['members']]]
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f'CELDetector: a probe has label {int(labels.max())}, beyond the '
                             f'selection net\'s num_classes={num_classes}')
        return probe_features(batch_inputs, self.probes, num_classes)

    def member_scores(self, batch_inputs: dict,
                      clusters: Optional[Clusters] = None) -> Tensor:
        """ĉ ``[B, N]`` of the selection net (``clusters`` are needed for meta-features)."""
        return self.selection_net(*self.selection_inputs(batch_inputs, clusters))

    def select(self, batch_inputs: dict) -> Tuple[Tensor, dict]:
        """Hard selection ``[B, N]`` (0/1) of each image's members (inference), and the batch
        with the member predictions. Live members: the probes run first, then only the
        selected members (every member for a net that reads them all)."""
        if self.selection_net.use_meta:
            batch_inputs = self.with_member_predictions(batch_inputs)
            clusters = self.extract_feat(batch_inputs)
            return self.selector.exact(self.member_scores(batch_inputs, clusters)), batch_inputs
        if self.probes:
            probes = self.probe_mask.float().expand(batch_inputs['image_sizes'].shape[0], -1)
            batch_inputs = self.with_member_predictions(batch_inputs, selection=probes)
        x = self.selector.exact(self.member_scores(batch_inputs))
        rest = x.masked_fill(self.probe_mask, 0.0)  # the probes have run
        return x, add_member_predictions(self.live_members, batch_inputs, rest)

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
                     img: Optional[Tensor], probe: Optional[Tensor] = None
                     ) -> Dict[str, Tensor]:
        """The loss of the selected members' fused output (docs/theory.md §5.4), plus the
        anchor of ĉ to its warm start.

        'perturbed_loss' (default): the loss of the exact selection is reported, and ĉ gets
        the gradient of each image's expected loss under perturbation (docs/theory.md §5.3)
        as ``loss_select`` (0). 'jacobian': the loss of the selector's output x,
        differentiated through the perturbed optimizer (docs/theory.md §5.3).
        """
        c_hat = self.selection_net(meta, img, probe)  # [B, N]
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
                'member_seconds': self.run_seconds(x.detach()).mean()}

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
        """:meth:`fuse`, and each image's ``selected_members`` (``Tensor[B, N]`` bool, the
        members fused) and its ``member_seconds`` (``Tensor[B]``, :meth:`run_seconds`: the
        members run, probes included, plus the selection): what :meth:`predict` puts in the
        samples' metainfo."""
        x, batch_inputs = self.select(batch_inputs)  # [B, N]
        x = x.detach()
        return self.fuse_selection(batch_inputs, x), dict(
            selected_members=x > 0.5, member_seconds=self.run_seconds(x))

    def fuse_selection(self, batch_inputs: dict, x: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """WBF of the boxes of the members ``x [B, N]`` (0/1) selects, per image."""
        sub = select_members({k: batch_inputs[k] for k in (
            'bboxes', 'scores', 'labels', 'members', 'images', 'image_sizes')}, x)
        return FUSION_METHODS['wbf'](PackedDetections.from_batch_inputs(sub, self.num_members),
                                     weights=self.weights, **self.fusion_cfg)
