"""e2e-CEL's ``objective='coco_ap'``: each image's selection is scored by COCO AP itself.

The training loss of ``CELDetector`` is by default a surrogate (a ranking loss and a box
term on the clusters of all members, restricted to the selected ones). Where the surrogate
and AP disagree, e2e-CEL follows the surrogate (README, *k = 3*). This objective scores
what the report scores instead: for every selection the selector can return, the WBF of
those members alone is run on the training images and evaluated by pycocotools, and
:func:`mmens.evaluation.ap_switch_deltas` gives how AP over the training images changes
when one image switches to it, against the selection at the start of training. The
perturbed-loss gradient (:mod:`mmens.ops.perturbed_loss`) only needs these loss values.
"""
from typing import Sequence

import torch
from torch import Tensor

from mmens.evaluation.ap_deltas import ap_switch_deltas
from mmens.evaluation.coco_eval import CocoEvaluation
from mmens.evaluation.samples_coco import coco_from_samples
from mmens.ops.knapsack import PerturbedSelector
from mmens.ops.knapsack_enum import MAX_ITEMS, feasible_subsets
from mmens.ops.perturbed_loss import subset_codes
from ..utils import split_results


def selector_subsets(selector: PerturbedSelector, num_members: int) -> Tensor:
    """``[S, N]`` 0/1: every selection the exact selector can return (top-k: all subsets of
    k members; knapsack: every subset within the budget, the empty one only without
    ``at_least_one``)."""
    if num_members > MAX_ITEMS:
        raise ValueError("CELDetector: train_cfg.objective='coco_ap' evaluates every "
                         f'selection: at most {MAX_ITEMS} members, got {num_members}')
    if selector.k is not None:  # top-k: the k-member subsets of unit costs
        rows = feasible_subsets(torch.ones(num_members), selector.k).float()
        return rows[rows.sum(1) == selector.k]
    if selector.subsets is None:
        raise ValueError("CELDetector: train_cfg.objective='coco_ap' needs the enumerated "
                         "knapsack (selector solver 'auto' or 'enum'), got 'dp'")
    rows = selector.subsets.float().cpu()
    return rows[rows.sum(1) > 0] if selector.at_least_one else rows


class APSwitchTable:
    """Per image, how much COCO AP over the training images drops when that image alone
    switches to each selection (the loss of the ``coco_ap`` objective, in AP points).

    Args:
        subsets (Tensor): ``[S, N]`` 0/1 selections. table (Tensor): ``[S, B]`` loss change
            (−ΔAP × 100 × ``weight``) of image b switching to ``subsets[s]`` from the
            reference selection.
    """

    def __init__(self, subsets: Tensor, table: Tensor) -> None:
        self.codes = subset_codes(subsets)  # [S]
        order = torch.argsort(self.codes)
        self.codes, self.table = self.codes[order], table[order]

    def _rows(self, x: Tensor) -> Tensor:
        codes = subset_codes(x)
        rows = torch.searchsorted(self.codes, codes).clamp_max(len(self.codes) - 1)
        if not bool((self.codes[rows] == codes).all()):
            raise ValueError('APSwitchTable: a selection outside the tabulated subsets')
        return rows

    def loss(self, x: Tensor) -> Tensor:
        """``[B]`` each image's table entry at its selection ``x [B, N]``."""
        return self.table[self._rows(x), torch.arange(x.shape[0], device=x.device)]

    def deltas(self, base: Tensor, candidates: Tensor) -> Tensor:
        """``[U, B]``: image b alone at ``candidates[u]`` instead of ``base[b]`` (the
        ``loss_deltas`` of :func:`mmens.ops.perturbed_loss.perturbed_loss_grad`)."""
        return self.table[self._rows(candidates)] - self.loss(base)[None]

    @classmethod
    def build(cls, model, batch_inputs: dict, samples: Sequence, reference: Tensor,
              weight: float = 1.0) -> 'APSwitchTable':
        """The table of ``model`` (a ``CELDetector``) on a batch, against the selection
        ``reference [B, N]``: one WBF and one pycocotools evaluation per selection."""
        from mmens.apis.member_files import results_to_coco
        subsets = selector_subsets(model.selector, model.num_members).to(reference.device)
        subsets = subsets[torch.argsort(subset_codes(subsets))]  # the table's row order
        sizes = batch_inputs['image_sizes']
        num_images = sizes.shape[0]
        labels = [batch_inputs['labels']] + [
            inst.labels for s in samples
            for inst in (s.gt_instances, s.get('ignored_instances', None))
            if inst is not None and 'labels' in inst]
        num_classes = max([int(t.max()) + 1 for t in labels if t.numel()] + [1])
        coco = coco_from_samples(samples, sizes, num_classes)
        img_ids, cat_ids = list(range(1, num_images + 1)), list(range(1, num_classes + 1))
        evals = []
        for row in subsets:
            boxes, scores, labs, images = model.fuse_selection(
                batch_inputs, row[None].expand(num_images, -1))
            results = []
            for b, r in enumerate(split_results(boxes, scores, labs, images, sizes,
                                                **model.test_cfg)):
                results += results_to_coco(r.bboxes, r.scores, r.labels,
                                           torch.full((len(r.scores), ), b), img_ids, cat_ids)
            evals.append(CocoEvaluation(coco, results, img_ids))
        table = cls(subsets, torch.zeros(len(subsets), num_images))
        delta = ap_switch_deltas(evals, table._rows(reference).cpu().numpy())  # [S, B] ΔAP
        table.table = torch.as_tensor(-100.0 * weight * delta, dtype=torch.float32,
                                      device=reference.device)
        return table
