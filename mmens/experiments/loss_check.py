"""Does e2e-CEL's training loss rank fixed member subsets as AP does, on its training images?

e2e-CEL follows the gradient of its training loss. Where that loss prefers another fixed
subset than AP does on the very images it trains on, its per-image departures from the best
fixed subset follow the loss, not AP (``tools/analysis_tools/cel_loss_vs_ap.py`` shows this on all val
images). :func:`loss_preferred_subset` answers the question per training fold, in sample
and without a held-out image, so that the budget report can keep e2e-CEL only where the
answer is yes (``budget_report(..., loss_check=True)``). It is a report row, not a default:
on the embedded val split it fixes k = 3 but drops the gains at k = 1, k = 5 and 0.4 s
(README, *k = 3*).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from mmengine.dataset import pseudo_collate

from mmens.ops.clustering import Clusters


def training_inputs(model: torch.nn.Module, dataset_cfg: dict) -> Tuple[Clusters, object]:
    """The clusters and targets ``model.loss_inputs`` makes of every image of
    ``dataset_cfg`` (e.g. a fold's training split), in one batch."""
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(dataset_cfg)
    data = model.data_preprocessor(
        pseudo_collate([dataset[i] for i in range(len(dataset))]), True)
    clusters, targets, _, _ = model.loss_inputs(data['inputs'], data['data_samples'])
    return clusters, targets


def fixed_subset_losses(model: torch.nn.Module, clusters: Clusters, targets,
                        subsets: Sequence[Tuple[int, ...]], names: Sequence[str],
                        seed: int = 0) -> Dict[str, np.ndarray]:
    """Training loss terms (``model.selection_loss``) of each fixed subset, every image
    selecting that subset.

    Args:
        model (CELDetector): its ``train_cfg`` defines the loss.
        clusters, targets: of :func:`training_inputs`.
        subsets (Sequence[tuple]): member positions in ``names``.
        names (Sequence[str]): member names, the order of ``subsets``' positions.
        seed (int): the ranking loss's sampled negatives (the same for every subset; the
            global random state is left as it was).

    Returns:
        dict: ``loss_cls`` and ``loss_box``, ``[len(subsets)]`` each.
    """
    num_images = int(clusters.image_index.max()) + 1 if clusters.image_index.numel() else 0
    cols = [model.members.index(n) for n in names]
    out: Dict[str, list] = {'loss_cls': [], 'loss_box': []}
    for s in subsets:
        x = clusters.y_hat.new_zeros(num_images, model.num_members)
        x[:, [cols[i] for i in s]] = 1.0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            loss = model.selection_loss(clusters, targets, x)
        for key, values in out.items():
            values.append(float(loss[key]))
    return {key: np.asarray(values) for key, values in out.items()}


def loss_preferred_subset(model: torch.nn.Module, dataset_cfg: dict,
                          subsets: List[Tuple[int, ...]], names: Sequence[str],
                          seed: int = 0) -> Tuple[int, ...]:
    """The fixed subset (of ``subsets``) with the lowest training loss on ``dataset_cfg``'s
    images (ties: the first)."""
    if not subsets:
        raise ValueError('loss_preferred_subset: no subset to compare')
    clusters, targets = training_inputs(model, dataset_cfg)
    losses = fixed_subset_losses(model, clusters, targets, subsets, names, seed)
    return subsets[int(np.argmin(losses['loss_cls'] + losses['loss_box']))]
