"""Live ensemble members: mmdet detectors built from config + checkpoint, frozen."""
import copy
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.hub import get_config
from mmengine.logging import print_log
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from torch import Tensor, nn

from mmdet.registry import MODELS

from mmens.ops.masks import MaskRuns, runs_from_bitmaps

#: the keys a live member's config dict may have
LIVE_MEMBER_CFG_KEYS = ('name', 'config', 'checkpoint', 'flip', 'score_thr', 'max_per_img')


def member_pipeline(cfg: Config, name: str) -> Compose:
    """The member's own test pipeline, reading an in-memory image instead of a file.

    The first transform (the image loader) becomes ``mmdet.LoadImageFromNDArray`` and
    annotation loaders are dropped, as in ``mmdet.apis.inference_detector``.
    """
    if cfg.get('test_dataloader') and cfg.test_dataloader.get('dataset'):
        pipeline = cfg.test_dataloader.dataset.get('pipeline')
    else:
        pipeline = cfg.get('test_pipeline')
    if not pipeline:
        raise ValueError(f'member {name}: its config has no test pipeline '
                         '(test_dataloader.dataset.pipeline or test_pipeline)')
    pipeline = [dict(t) for t in copy.deepcopy(pipeline)
                if 'LoadAnnotations' not in str(t.get('type'))]
    if 'LoadImage' not in str(pipeline[0].get('type')):
        raise ValueError(f'member {name}: the first transform of its test pipeline is '
                         f"{pipeline[0].get('type')}, not an image loader")
    pipeline[0] = dict(type='mmdet.LoadImageFromNDArray')
    return Compose(pipeline)


def build_member(config: str, checkpoint: Optional[str], name: str, score_thr: float,
                 max_per_img: int) -> Tuple[nn.Module, Compose]:
    """Build one frozen member detector (eval mode, no gradients) and its test pipeline.

    ``score_thr`` and ``max_per_img`` override the member's ``test_cfg`` (``test_cfg.rcnn``
    for two-stage detectors) so that low-score boxes are kept for fusion.
    """
    if '::' in str(config):  # a config of an installed package, e.g. 'mmdet::retinanet/...'
        try:
            cfg = get_config(config)
        except Exception as e:  # mmengine raises FileNotFoundError / ValueError
            raise ValueError(f'member {name}: cannot load config {config}: {e}') from e
    elif not osp.isfile(str(config)):
        raise ValueError(f'member {name}: config file {config} does not exist')
    else:
        cfg = Config.fromfile(config)
    if (checkpoint is not None and '://' not in str(checkpoint)
            and not osp.isfile(str(checkpoint))):
        raise ValueError(f'member {name}: checkpoint file {checkpoint} does not exist')
    model_cfg = cfg.model
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None  # weights come from the checkpoint
    test_cfg = model_cfg.get('test_cfg')
    if test_cfg is None:
        raise ValueError(f'member {name}: its config has no model.test_cfg')
    target = test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg
    target.score_thr = score_thr
    target.max_per_img = max_per_img
    try:
        # in the member's own scope, for this build only: the ensemble around it is being
        # built in the 'mmens' scope, which must stay current
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
            model = revert_sync_batchnorm(MODELS.build(model_cfg))
            pipeline = member_pipeline(cfg, name)
    except (KeyError, TypeError, AssertionError) as e:  # unregistered types, bad arguments
        raise ValueError(f'member {name}: cannot build it from {config}: {e}') from e
    if checkpoint is not None:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
        meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
        if 'dataset_meta' in meta:
            model.dataset_meta = {k.lower(): v for k, v in meta['dataset_meta'].items()}
    else:
        print_log(f'member {name}: no checkpoint, using the weights of its initialisation',
                  logger='current')
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, pipeline


class LiveMembers:
    """N frozen mmdet detectors run on raw images, their predictions packed for fusion.

    Like the teacher of mmdet's ``KnowledgeDistillationSingleStageDetector``, the members
    are not submodules of the ensemble: they are not in its optimizer, its ``train()``
    leaves them in eval mode, and its checkpoints do not hold them. Each member runs its
    own test pipeline (resize, normalisation, ...) and data preprocessor on the raw image
    and predicts boxes in the raw image's pixels, clipped to the image; boxes of zero
    width or height are left out and counted in ``num_degenerate`` (the cached path
    rejects them). A member entry with ``flip=True`` runs
    on the horizontally flipped image and its boxes are flipped back (the ``-hflip``
    members of the embedded data); entries with the same config and checkpoint share one
    model.

    Members must predict the ensemble dataset's classes in its order (as all of mmdet's
    COCO models do); label ``l`` of a member is label ``l`` of the ensemble.

    Args:
        members (Sequence[dict]): per member ``config`` (path, or ``'mmdet::<path>'``
            for mmdet's own configs), ``checkpoint`` (path, URL, or None), optional
            ``name`` (default: config stem, ``-hflip`` added when flipped),
            ``flip`` (default False), ``score_thr`` (default 0.001), ``max_per_img``
            (default 100).
    """

    def __init__(self, members: Sequence[dict]) -> None:
        if len(members) == 0:
            raise ValueError('LiveMembers: no members given')
        #: the detector that fuses boxes only, if it does: the masks of
        #: instance-segmentation members are then not packed, and a one-line warning per
        #: member says so (set by :class:`BaseEnsembleDetector`)
        self.boxes_only_for: Optional[str] = None
        self._unused_masks: set = set()
        self.specs: List[dict] = []
        self.models: Dict[tuple, Tuple[nn.Module, Compose]] = {}
        for i, m in enumerate(members):
            if not isinstance(m, dict) or 'config' not in m:
                raise ValueError(f'member {i}: a live member is dict(config=..., '
                                 f'checkpoint=...), got {m!r}')
            unknown = set(m) - set(LIVE_MEMBER_CFG_KEYS)
            if unknown:
                raise ValueError(f'member {i}: unknown keys {sorted(unknown)}; '
                                 f'allowed: {LIVE_MEMBER_CFG_KEYS}')
            flip = bool(m.get('flip', False))
            stem = osp.splitext(osp.basename(m['config']))[0]
            spec = dict(name=m.get('name', stem + ('-hflip' if flip else '')),
                        config=m['config'], checkpoint=m.get('checkpoint'), flip=flip,
                        score_thr=float(m.get('score_thr', 0.001)),
                        max_per_img=int(m.get('max_per_img', 100)))
            key = (spec['config'], spec['checkpoint'], spec['score_thr'],
                   spec['max_per_img'])
            if key not in self.models:
                self.models[key] = build_member(*key[:2], spec['name'], *key[2:])
            spec['key'] = key
            self.specs.append(spec)
        names = [s['name'] for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f'LiveMembers: member names must be unique, got {names}')
        self.names = tuple(names)
        #: boxes of zero width or height (after clipping to the image) a member predicted,
        #: left out of the fusion, per member name
        self.num_degenerate: Dict[str, int] = {}
        #: (member, image) forwards made, per member index
        self.runs: List[int] = [0] * len(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def to(self, device) -> 'LiveMembers':
        for model, _ in self.models.values():
            model.to(device)
        return self

    @torch.no_grad()
    def predict_member(self, index: int, images: Sequence[np.ndarray]) -> List[dict]:
        """Run member ``index`` on raw images (``HWC`` BGR ``uint8``).

        Returns:
            list[dict]: per image ``bboxes`` ``Tensor[K, 4]`` (pixels of the raw image,
            xyxy), ``scores`` ``Tensor[K]``, ``labels`` ``Tensor[K]``.
        """
        spec = self.specs[index]
        model, pipeline = self.models[spec['key']]
        if spec['flip']:
            images = [np.ascontiguousarray(img[:, ::-1]) for img in images]
        data = [pipeline(dict(img=img, img_id=i)) for i, img in enumerate(images)]
        batch = dict(inputs=[d['inputs'] for d in data],
                     data_samples=[d['data_samples'] for d in data])
        outs = []
        for img, sample in zip(images, model.test_step(batch)):
            pred = sample.pred_instances
            boxes = pred.bboxes.float().reshape(-1, 4)  # [K, 4]
            h, w = float(img.shape[0]), float(img.shape[1])
            if spec['flip']:
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0],
                                     boxes[:, 3]], dim=1)
            # clip to the image, as the cached path does; zero-size boxes are counted
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # [K]
            n_bad = int((~ok).sum())
            if n_bad:
                self.num_degenerate[spec['name']] = (
                    self.num_degenerate.get(spec['name'], 0) + n_bad)
            out = dict(bboxes=boxes[ok], scores=pred.scores.float().reshape(-1)[ok],
                       labels=pred.labels.long().reshape(-1)[ok])
            if 'masks' in pred and self.boxes_only_for is not None:
                self._warn_unused_masks(spec['name'])
            elif 'masks' in pred:  # instance segmentation: bitmaps [K, H, W] of the raw image
                masks = pred.masks.flip(-1) if spec['flip'] else pred.masks
                out['masks'] = runs_from_bitmaps(masks[ok])
            outs.append(out)
        return outs

    def _warn_unused_masks(self, name: str) -> None:
        if name not in self._unused_masks:
            self._unused_masks.add(name)
            print_log(f'member {name} predicts instance masks, which {self.boxes_only_for} '
                      'does not fuse (boxes only): MaskFusionDetector fuses them',
                      logger='current', level=logging.WARNING)

    def __call__(self, images: Sequence[Tensor], selection: Optional[Tensor] = None) -> dict:
        """Run the members on a batch of raw images and pack their predictions.

        Args:
            images (Sequence[Tensor]): ``B`` images ``Tensor[3, H, W]`` (BGR ``uint8`` as
                loaded by ``LoadImageFromFile`` and packed by ``PackEnsembleInputs``).
            selection (Tensor, optional): ``[B, N]``; member m runs only on the images b
                with ``selection[b, m] > 0.5`` (default: every member on every image).
                ``runs`` counts the (member, image) forwards actually made.

        Returns:
            dict: ``bboxes [M, 4]`` (pixels), ``scores [M]``, ``labels [M]``, ``members [M]``,
            ``images [M]``, as :func:`pack_members` makes from cached predictions.
        """
        if len(images) == 0:
            raise ValueError('LiveMembers: empty batch of images')
        device = images[0].device
        for model, _ in self.models.values():
            if next(iter(model.parameters()), torch.zeros(0)).device != device:
                model.to(device)
        raw = [img.permute(1, 2, 0).cpu().numpy() for img in images]
        boxes, scores, labels, members, image_index, masks = [], [], [], [], [], []
        chosen = None if selection is None else (selection > 0.5).cpu()  # [B, N]
        for m in range(len(self)):
            idx = list(range(len(raw))) if chosen is None else \
                torch.nonzero(chosen[:, m]).flatten().tolist()
            if not idx:
                continue
            self.runs[m] += len(idx)
            for b, out in zip(idx, self.predict_member(m, [raw[i] for i in idx])):
                k = out['scores'].shape[0]
                boxes.append(out['bboxes'].to(device))
                scores.append(out['scores'].to(device))
                labels.append(out['labels'].to(device))
                members.append(torch.full((k,), int(m), dtype=torch.long, device=device))
                image_index.append(torch.full((k,), b, dtype=torch.long, device=device))
                masks.append((m, out.get('masks')))
        if not boxes:
            z = torch.zeros(0, device=device)
            return dict(bboxes=z.reshape(0, 4), scores=z, labels=z.long(), members=z.long(),
                        images=z.long())
        # order by image, as the cached path packs them
        image_index = torch.cat(image_index)
        order = torch.argsort(image_index, stable=True)
        packed = dict(bboxes=torch.cat(boxes)[order], scores=torch.cat(scores)[order],
                      labels=torch.cat(labels)[order], members=torch.cat(members)[order],
                      images=image_index[order])
        if any(runs is not None for _, runs in masks):  # instance segmentation members
            packed['masks'] = self._packed_masks(masks, order)
        return packed

    def _packed_masks(self, masks: List[Tuple[int, Optional[MaskRuns]]],
                      order: Tensor) -> MaskRuns:
        """The masks of each (member, images) piece as one :class:`MaskRuns`, in the packed
        order ``order``; every member must predict masks (one line naming one that does
        not)."""
        without = sorted({self.specs[m]['name'] for m, runs in masks if runs is None})
        if without:
            raise ValueError(f'live members {without} predict no masks, and the others do: '
                             'fuse instance-segmentation members with one another')
        runs = MaskRuns.cat([r for _, r in masks])
        return runs.select(order.to(runs.offsets.device))


class FrozenMembers(nn.ModuleList):
    """The live member models registered as submodules, for ``save_members=True``: they are
    then saved in (and loaded from) the ensemble's checkpoints, and still never train
    (``train()`` keeps them in eval mode; their parameters need no gradient)."""

    def train(self, mode: bool = True) -> 'FrozenMembers':
        return super().train(False)


def register_members(detector: nn.Module, live: Optional[LiveMembers],
                     save_members: bool) -> None:
    """With ``save_members``, register the live members' models on ``detector`` (as
    ``member_models``) so that checkpoints hold them; otherwise they stay outside it, like
    the teacher of mmdet's ``kd_one_stage.py``."""
    if save_members:
        if live is None:
            raise ValueError('save_members=True needs live members (dict(config=..., '
                             'checkpoint=...))')
        detector.member_models = FrozenMembers([m for m, _ in live.models.values()])


def parse_members(members: Sequence) -> Tuple[tuple, Optional[LiveMembers]]:
    """Member names, and the live members when ``members`` are detector configs.

    Args:
        members: either names (cached predictions, read by the dataset) or
            ``dict(config=..., checkpoint=...)`` entries (live members, see
            :class:`LiveMembers`).
    """
    if len(members) > 0 and all(isinstance(m, str) for m in members):
        return tuple(members), None
    if len(members) > 0 and all(isinstance(m, dict) for m in members):
        live = LiveMembers(members)
        return live.names, live
    raise ValueError('members: give either member names (cached predictions) or '
                     f'dict(config=..., checkpoint=...) per member (live), got {members!r}')


def with_member_predictions(live: Optional[LiveMembers], batch_inputs: dict,
                            selection: Optional[Tensor] = None) -> dict:
    """``batch_inputs`` with the packed member predictions, running live members if needed
    (only the selected ones when ``selection [B, N]`` is given)."""
    if 'bboxes' in batch_inputs:
        return batch_inputs
    if live is None:
        raise ValueError('the batch holds no member predictions: use CocoEnsembleDataset with '
                         'LoadMemberPredictions, or live members (members=[dict(config=..., '
                         'checkpoint=...)])')
    if 'img' not in batch_inputs:
        raise ValueError('live members need the images: put LoadImageFromFile before '
                         'PackEnsembleInputs in the pipeline')
    return dict(batch_inputs, **live(batch_inputs.get('img_raw', batch_inputs['img']),
                                     selection=selection))


def add_member_predictions(live: Optional[LiveMembers], batch_inputs: dict,
                           selection: Tensor) -> dict:
    """``batch_inputs`` with the predictions of the members ``selection [B, N]`` selects
    added to those it holds (e.g. e2e-CEL's probes): live members run on the images that
    select them only; cached predictions are all there already."""
    if 'bboxes' not in batch_inputs:
        return with_member_predictions(live, batch_inputs, selection=selection)
    if live is None or not bool((selection > 0.5).any()):
        return batch_inputs
    more = live(batch_inputs.get('img_raw', batch_inputs['img']), selection=selection)
    keys = ('bboxes', 'scores', 'labels', 'members', 'images')
    merged = {k: torch.cat([batch_inputs[k], more[k]]) for k in keys}
    order = torch.argsort(merged['images'], stable=True)  # by image, as packed
    return dict(batch_inputs, **{k: v[order] for k, v in merged.items()})
