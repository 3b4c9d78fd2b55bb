"""Apply an ensemble (fixed rule or trained checkpoint) to a packed member batch."""
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from mmens.evaluation.coco_eval import arrays_to_results, results_to_arrays
from mmens.evaluation.fast_coco_ap import DetectionArrays
from mmens.ops.results import rank_results
from .fixed_ensemble import build_fixed_ensemble  # noqa: F401  (re-exported)
from .member_files import MemberBatch


def load_ensemble_checkpoint(checkpoint: str, config: Optional[str] = None,
                             device: str = 'cpu') -> nn.Module:
    """Build a trained ensemble from its checkpoint alone.

    mmengine checkpoints carry the training config (``meta['cfg']``); ``config`` overrides
    it. Loading uses ``torch.load(weights_only=True)`` with mmens' allow-list; a checkpoint
    needing anything else is refused (:class:`mmens.utils.UnsafeCheckpointError`).
    """
    # mmdet & co. only here: the fixed rules and the batch APIs below run without them
    from mmens.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmens.utils.setup_env import safe_torch_load
    ckpt = safe_torch_load(checkpoint, map_location='cpu')  # one-line errors (ValueError)
    if not isinstance(ckpt, dict):
        raise ValueError(f'checkpoint {checkpoint} holds a {type(ckpt).__name__}, not an '
                         'mmengine checkpoint dict')
    if config is not None:
        cfg = Config.fromfile(config)
    else:
        text = ckpt.get('meta', {}).get('cfg')
        if not text:
            raise ValueError(f'checkpoint {checkpoint} carries no config; pass --config')
        cfg = Config.fromstring(text, file_format='.py')
    init_default_scope('mmens')  # configs saved before mmens.registry say 'mmdet'
    model = MODELS.build(cfg.model)
    state = ckpt.get('state_dict', ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith('data_preprocessor')]:
        raise ValueError(f'checkpoint {checkpoint} does not fit its config: missing '
                         f'{missing}, unexpected {unexpected}')
    model.dataset_meta = ckpt.get('meta', {}).get('dataset_meta')
    return model.to(device).eval()


def order_members(model_members: Sequence[str], names: Sequence[str]) -> List[int]:
    """Index into ``names`` of each of the model's members; a clear error otherwise."""
    missing = [m for m in model_members if m not in names]
    unknown = [n for n in names if n not in model_members]
    if missing or unknown:
        raise ValueError(f'the ensemble was trained with members {list(model_members)}; '
                         f'missing prediction files for {missing}, unknown members '
                         f'{unknown} (name files by member, or pass --names)')
    return [list(names).index(m) for m in model_members]


def member_remap(model_members: Sequence[str], names: Sequence[str]) -> Tensor:
    """``Tensor[N]``: the model's member index of each of ``names`` (clear error otherwise,
    see :func:`order_members`). ``remap[packed['members']]`` re-indexes a packed batch;
    ``x[:, remap]`` turns a model-order ``[B, N]`` into ``names`` order."""
    perm = torch.tensor(order_members(model_members, names), dtype=torch.long)
    remap = torch.empty_like(perm)
    remap[perm] = torch.arange(len(perm))
    return remap


@torch.no_grad()
def fuse_batch_arrays(model: nn.Module, batch: MemberBatch, chunk: int = 256,
                      device: str = 'cpu', max_per_img: int = 100,
                      selections: Optional[list] = None) -> Tuple[DetectionArrays, float]:
    """Fuse every image of ``batch`` with ``model.fuse_with_metainfo``, ``chunk`` images at
    a time.

    The batch's members are mapped to the model's members by name. Returns the fused
    detections as columns (COCO ids, ``bbox`` xywh pixels rounded to 1e-3, ``score`` to
    1e-6; by image, then by descending score) and the seconds spent fusing (excluding
    file I/O and the conversion to COCO ids). For models that select members per image
    (e2e-CEL), ``selections`` receives each chunk's ``selected_members`` (the metainfo
    that ``model.predict`` gives each sample, as ``[B, N]`` 0/1) in the batch's member
    order.
    """
    remap = member_remap(model.members, batch.names)
    n_img = len(batch.img_ids)
    packed = {k: v for k, v in batch.packed.items() if k != 'image_sizes'}
    # Each chunk's boxes made contiguous by one stable sort on the chunk index: a chunk is
    # then a slice, in the order that select_images' mask would give (member-major), and
    # the loop does not scan all M boxes once per chunk.
    of_chunk = torch.div(packed['images'], chunk, rounding_mode='floor')
    order = torch.argsort(of_chunk, stable=True)
    packed = {k: v[order] for k, v in packed.items()}
    packed['members'] = remap[packed['members']]
    bounds = [0] + torch.cumsum(torch.bincount(of_chunk, minlength=-(-n_img // chunk)),
                                0).tolist()
    del of_chunk, order
    model = model.to(device).eval()
    parts, seconds = [], 0.0
    for c, start in enumerate(range(0, n_img, chunk)):
        part = {k: v[bounds[c]:bounds[c + 1]].to(device) for k, v in packed.items()}
        part['images'] = part['images'] - start
        part['image_sizes'] = batch.packed['image_sizes'][start:start + chunk].to(device)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        (boxes, scores, labels, images), info = model.fuse_with_metainfo(part)
        boxes, scores, labels, images = rank_results(boxes, scores, labels, images,
                                                     part['image_sizes'],
                                                     max_per_img=max_per_img)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        if selections is not None and 'selected_members' in info:
            selections.append(info['selected_members'][:, remap.to(device)].float().cpu())
        parts.append(results_to_arrays(boxes, scores, labels, images + start, batch.img_ids,
                                       batch.cat_ids))
    if not parts:  # no images
        ids = np.zeros(0, dtype=np.int64)
        return DetectionArrays(ids, ids, np.zeros((0, 4)), np.zeros(0)), seconds
    return DetectionArrays(*(np.concatenate(cols) for cols in zip(*parts))), seconds


def fuse_batch(model: nn.Module, batch: MemberBatch, chunk: int = 256, device: str = 'cpu',
               max_per_img: int = 100,
               selections: Optional[list] = None) -> Tuple[List[dict], float]:
    """:func:`fuse_batch_arrays` as COCO-results entries (a list of dicts)."""
    fused, seconds = fuse_batch_arrays(model, batch, chunk, device, max_per_img, selections)
    return arrays_to_results(fused), seconds
