"""Per-image features for e2e-CEL's selection (docs/theory.md §5.1): of every member's
predictions (:func:`selection_features`, an accuracy mode: all members must run first), or
of the probe members' and the image's (:func:`probe_features`, what a budget may read).

Cheap statistics of matched clusters, batched over images with ``index_add_`` (no Python loop
over boxes or images), pure torch and device-agnostic.
"""
from typing import List, Sequence

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


def probe_feature_names(num_probes: int, num_classes: int) -> List[str]:
    """Names of the ``P * (8 + num_classes) + 2`` columns of :func:`probe_features`."""
    per = ['log_boxes', 'log_confident', 'mean_score', 'max_score', 'log_score_sum',
           'mean_size', 'mean_cx', 'mean_cy'] + [f'class_{c}' for c in range(num_classes)]
    return [f'{p}[{i}]' for i in range(num_probes) for p in per] + ['log_width', 'log_height']


def probe_features(inputs: dict, probes: Sequence[int], num_classes: int,
                   confident: float = 0.3) -> Tensor:
    """Per-image features of the detections of the probe members and of the image: what a
    budget selection may read before the members it selects run.

    Per probe (each column ``[B]``): log(1 + its boxes), log(1 + its boxes scoring at least
    ``confident``), its mean and max score, log(1 + its summed score), the score-weighted
    mean of its boxes' size (sqrt of the area, normalised by the image) and centre (x, y,
    normalised), and its class histogram (summed score per class over the summed score).
    Per image: log of its width and height over 640. Only the rows of ``probes`` are read,
    so the other members' predictions cannot change the result.

    Args:
        inputs (dict): packed ``bboxes [M, 4]`` (pixels, x1y1x2y2), ``scores``, ``labels``,
            ``members``, ``images`` ``[M]`` and ``image_sizes [B, 2]`` (width, height).
        probes (Sequence[int]): member indices of the probes.
        num_classes (int): length of the class histogram (labels in ``[0, num_classes)``).
        confident (float): the score threshold of the confident count.

    Returns:
        Tensor[B, P * (8 + num_classes) + 2] (float32).
    """
    sizes = inputs['image_sizes'].float()  # [B, 2]
    b = sizes.shape[0]
    dev = sizes.device
    members, images = inputs['members'], inputs['images']
    feats = []
    for p in probes:  # P is 1 or 2: the loop is over probes, not boxes
        keep = members == p  # [M]
        img = images[keep]  # [K]
        s = inputs['scores'][keep].float()  # [K]
        box = inputs['bboxes'][keep].float() / sizes[img].repeat(1, 2)  # [K, 4] normalised
        wh = (box[:, 2:] - box[:, :2]).clamp_min(0)  # [K, 2]
        ctr = (box[:, :2] + box[:, 2:]) / 2  # [K, 2]

        def per_image(x: Tensor) -> Tensor:
            out = torch.zeros((b,) + tuple(x.shape[1:]), device=dev, dtype=x.dtype)
            return out.index_add_(0, img, x)

        count = per_image(torch.ones_like(s))  # [B]
        total = per_image(s)  # [B]
        norm = total.clamp_min(1e-6)[:, None]  # [B, 1]
        best = torch.zeros(b, device=dev).scatter_reduce_(0, img, s, 'amax')  # [B]
        hist = torch.zeros(b, num_classes, device=dev).index_put_(
            (img, inputs['labels'][keep].long()), s, accumulate=True)  # [B, num_classes]
        feats += [torch.log1p(count)[:, None],
                  torch.log1p(per_image((s >= confident).float()))[:, None],
                  (total / count.clamp_min(1.0))[:, None], best[:, None],
                  torch.log1p(total)[:, None],
                  per_image(s * wh.prod(1).sqrt())[:, None] / norm,
                  per_image(s[:, None] * ctr) / norm, hist / norm]
    feats.append(torch.log(sizes.clamp_min(1.0) / 640.0))
    return torch.cat(feats, dim=1)  # [B, P * (8 + num_classes) + 2]
