"""Seeded COCO-like loads for scale and speed tests (no real data needed).

Every draw comes from a ``torch.Generator`` seeded with ``seed``: the same arguments give
the same load, whatever the global RNG state.
"""
from typing import Dict, Tuple

import torch
from torch import Tensor


def synthetic_batch(num_images: int, num_members: int, boxes_per_member: int = 100,
                    num_classes: int = 80, objects_per_image: int = 7, seed: int = 0,
                    device: str = 'cpu') -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """A packed batch of member predictions and its ground truth, COCO-sized.

    Each image has ``1..2*objects_per_image`` objects (COCO averages about 7). Every member
    detects each object a few times with jittered boxes (mostly the right class, scores
    from Beta(5, 2)), and fills the rest of its ``boxes_per_member`` with low-scoring
    background boxes of random classes, like a detector's top-100 output.

    Args:
        seed (int): seed of the load's own generator (the global RNG is not touched).

    Returns:
        packed (dict): ``bboxes [M, 4]`` pixels, ``scores [M]``, ``labels [M]``,
        ``members [M]``, ``images [M]``, ``image_sizes [I, 2]`` (640x480).
        gt (dict): ``bboxes [G, 4]`` pixels, ``labels [G]``, ``images [G]``.
    """
    g = torch.Generator().manual_seed(seed)
    i, n, b = num_images, num_members, boxes_per_member
    k = torch.randint(1, 2 * objects_per_image + 1, (i,), generator=g)  # objects per image
    gt_img = torch.repeat_interleave(torch.arange(i), k)  # [G]
    n_gt = gt_img.numel()
    ctr = torch.rand(n_gt, 2, generator=g) * 0.8 + 0.1
    wh = torch.exp(torch.rand(n_gt, 2, generator=g) * 3.0 - 3.5)  # 0.03 .. 0.6
    gt_lab = torch.randint(0, num_classes, (n_gt,), generator=g)
    gt_box = torch.cat([ctr - wh / 2, ctr + wh / 2], 1).clamp(0, 1)  # [G, 4]
    # each (member, image) slot: first the object detections, then background
    slot = torch.arange(b).repeat(i * n)  # [I*N*B]
    img = torch.arange(i).repeat_interleave(n * b)
    mem = torch.arange(n).repeat_interleave(b).repeat(i)
    start = torch.cumsum(k, 0) - k
    obj = start[img] + slot % k[img]  # object each slot jitters
    is_obj = slot < 3 * k[img]
    jit = torch.randn(img.numel(), 4, generator=g) * 0.06
    box = gt_box[obj] + jit * wh[obj].repeat(1, 2)
    bg_c = torch.rand(img.numel(), 2, generator=g)
    bg_s = torch.exp(torch.rand(img.numel(), 2, generator=g) * 3.2 - 3.9)
    bg = torch.cat([bg_c - bg_s / 2, bg_c + bg_s / 2], 1)
    box = torch.where(is_obj[:, None], box, bg).clamp(0, 1)
    box = torch.cat([box[:, :2], torch.maximum(box[:, 2:], box[:, :2] + 1e-3)], 1)
    right = torch.rand(img.numel(), generator=g) < 0.8
    lab = torch.where(is_obj & right, gt_lab[obj],
                      torch.randint(0, num_classes, (img.numel(),), generator=g))
    # Beta(5, 2) is the 5th smallest of 6 uniforms: drawn from ``g`` like everything
    # else (torch.distributions.Beta samples from the global RNG, whatever the seed)
    beta = torch.rand(img.numel(), 6, generator=g).sort(1).values[:, 4]
    score = torch.where(is_obj & right, beta, torch.rand(img.numel(), generator=g) * 0.2)
    sizes = torch.tensor([640.0, 480.0]).repeat(i, 1)
    scale = sizes[img].repeat(1, 2)
    packed = dict(bboxes=(box.clamp(0, 1) * scale).to(device), scores=score.to(device),
                  labels=lab.to(device), members=mem.to(device), images=img.to(device),
                  image_sizes=sizes.to(device))
    gt = dict(bboxes=(gt_box * sizes[gt_img].repeat(1, 2)).to(device),
              labels=gt_lab.to(device), images=gt_img.to(device))
    return packed, gt
