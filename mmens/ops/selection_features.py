"""Per-image meta-features of the members' predictions, for e2e-CEL selection (docs/theory.md §5.1).

Cheap statistics of matched clusters, batched over images with ``index_add_`` (no Python loop
over boxes or images), pure torch and device-agnostic.
"""
from typing import List

import torch
from torch import Tensor


def selection_feature_names(num_members: int) -> List[str]:
    """Names of the ``4N + 2`` columns of :func:`selection_features`."""
    per = ['log_boxes', 'mean_score', 'log_score_sum', 'agreement']
    return [f'{p}[{i}]' for p in per for i in range(num_members)] + [
        'log_clusters', 'mean_members_per_cluster']


def selection_features(y_hat: Tensor, mask: Tensor, counts: Tensor, image_index: Tensor,
                       num_images: int) -> Tensor:
    """Meta-features of each image's member predictions.

    Per member i (each ``[B, N]``): log(1 + its boxes), its mean score, log(1 + its summed
    score), and its score-weighted agreement, the mean fraction of the *other* members that
    also have a box in its clusters. Per image: log(1 + clusters) and the mean number of
    members per cluster, divided by N.

    Args:
        y_hat (Tensor): ``[C, N, 5]`` clusters (score in column 4).
        mask (Tensor): ``[C, N]`` bool, member present in cluster.
        counts (Tensor): ``[C, N]`` boxes of the member in the cluster.
        image_index (Tensor): ``[C]`` image of each cluster, in ``[0, B)``.
        num_images (int): B.

    Returns:
        Tensor[B, 4N + 2] (float32).
    """
    c, n = mask.shape
    dev = y_hat.device
    m = mask.float()  # [C, N]
    cnt = counts.float()  # [C, N]
    score = y_hat[..., 4].float() * cnt  # [C, N] summed score of the member in the cluster
    present = m.sum(1)  # [C]
    others = ((present[:, None] - m) / max(n - 1, 1)) * m  # [C, N]

    def per_image(x: Tensor) -> Tensor:
        out = torch.zeros((num_images,) + tuple(x.shape[1:]), device=dev, dtype=x.dtype)
        return out.index_add_(0, image_index, x)

    boxes = per_image(cnt)  # [B, N]
    score_sum = per_image(score)  # [B, N]
    agree = per_image(others * score)  # [B, N]
    clusters = per_image(torch.ones(c, device=dev))  # [B]
    members = per_image(present)  # [B]
    feats = [
        torch.log1p(boxes),
        score_sum / boxes.clamp_min(1.0),
        torch.log1p(score_sum),
        agree / score_sum.clamp_min(1e-6),
        torch.log1p(clusters)[:, None],
        (members / clusters.clamp_min(1.0) / n)[:, None],
    ]
    return torch.cat(feats, dim=1)  # [B, 4N + 2]
