"""Test-time augmentation of one mmdet detector, its views merged by mmens' fusion rules."""
import inspect
from typing import List, Optional, Sequence, Tuple

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_flip
from mmengine.model import BaseTTAModel
from torch import Tensor

from mmens.ops import FUSION_METHODS, PackedDetections
from mmens.registry import MODELS
from ..utils import split_results

#: the fusion of the views unless the config says otherwise: WBF with ensemble-boxes'
#: defaults (docs/experiments.md, "Test-time augmentation", compares it with mmdet's NMS)
DEFAULT_FUSION = dict(method='wbf', iou_thr=0.55, skip_box_thr=0.0, conf_type='avg')


def check_fusion(fusion: Optional[dict], learned: Optional[dict] = None) -> Tuple[str, dict]:
    """``(method, keyword arguments)`` of a ``fusion`` dict, refused in one line when the
    method or one of its arguments does not exist. For WBF, the keys it does not set come
    from ``learned`` (a checkpoint's thresholds), then from :data:`DEFAULT_FUSION`."""
    fusion = dict(fusion or {})
    method = fusion.pop('method', DEFAULT_FUSION['method'])
    if method not in FUSION_METHODS:
        raise ValueError(f'EnsembleTTAModel: fusion.method {method!r} is not one of '
                         f'{sorted(FUSION_METHODS)}')
    if method == DEFAULT_FUSION['method']:
        fusion = {**{k: v for k, v in DEFAULT_FUSION.items() if k != 'method'},
                  **(learned or {}), **fusion}
    params = inspect.signature(FUSION_METHODS[method]).parameters
    allowed = sorted(p for p in params if p not in ('dets', 'weights', 'image_sizes')
                     and not p.startswith('_'))
    for key in fusion:
        if key not in allowed:
            raise ValueError(f'EnsembleTTAModel: fusion.{key} is not an argument of '
                             f'{method!r} (it takes {", ".join(allowed)})')
    return method, fusion


def merge_views(boxes: Tensor, scores: Tensor, labels: Tensor, views: Tensor, images: Tensor,
                image_sizes: Tensor, num_views: int, method: str = 'wbf',
                weights: Optional[Tensor] = None, max_per_img: int = 100,
                score_thr: float = 0.0, **fusion_cfg) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """Fuse the views of a batch of images, each view's boxes in its image's pixels.

    The views play the members of an ensemble: one packed call of the mmens fusion op
    (boxes normalised by their image's size) over the whole batch.

    Args:
        boxes (Tensor[M, 4]): ``x1, y1, x2, y2`` pixels of the original image (flips
            undone); clipped to the image first.
        scores (Tensor[M]): in ``[0, 1]``. labels (Tensor[M]): class indices.
        views (Tensor[M]): view of each box, ``0..num_views-1``.
        images (Tensor[M]): image of each box, ``0..B-1``.
        image_sizes (Tensor[B, 2]): ``(width, height)``.
        num_views (int): V, the number of views.
        method (str): ``'wbf'``, ``'nms'``, ``'soft_nms'`` or ``'nmw'``.
        weights (Tensor[V], optional): view weights (default equal).
        max_per_img (int): keep the highest scores of each image (>= 1).
        score_thr (float): drop fused scores below it (in ``[0, 1]``).
        **fusion_cfg: the method's keyword arguments (``iou_thr``, ``conf_type``, ...).

    Returns:
        list[tuple]: per image, ``bboxes [K, 4]`` (pixels), ``scores [K]``, ``labels [K]``.
    """
    wh = image_sizes.to(boxes.dtype)[images].repeat(1, 2)  # [M, 4]
    # a box decoded on the resized input and rescaled can pass the border by rounding:
    # clipped here, as mmdet clips, rather than counted in the fusion ops' warning
    normed = (boxes / wh).clamp(0.0, 1.0)  # [M, 4]
    dets = PackedDetections(normed, scores, labels.long(), views.long(), images.long(),
                            num_views, int(image_sizes.shape[0]))
    fused = FUSION_METHODS[method](dets, weights=weights, **fusion_cfg)
    results = split_results(*fused, image_sizes, max_per_img=max_per_img, score_thr=score_thr)
    return [(r.bboxes, r.scores, r.labels) for r in results]


def unflipped_boxes(sample: DetDataSample) -> Tensor:
    """The view's predicted boxes ``[K, 4]`` in the original image, flip undone."""
    boxes = sample.pred_instances.bboxes
    boxes = boxes.tensor if hasattr(boxes, 'tensor') else boxes
    if sample.metainfo.get('flip', False):
        boxes = bbox_flip(boxes, img_shape=sample.metainfo['ori_shape'],
                          direction=sample.metainfo['flip_direction'])
    return boxes


@MODELS.register_module()
class EnsembleTTAModel(BaseTTAModel):
    """mmdet's ``DetTTAModel`` with the views merged by WBF, NMS, soft-NMS or NMW.

    A drop-in for ``DetTTAModel`` in ``tta_model``: the views that mmdet's ``TestTimeAug``
    makes (flips, scales) are the members of an ensemble of one detector. Their boxes
    are taken back to the original image (flips undone, as ``DetTTAModel`` does) and fused
    by the mmens op of ``fusion.method``, all images of a batch in one call.

    Args:
        module (dict | nn.Module): the detector (``tools/test.py --tta`` fills it in).
        fusion (dict): ``method`` (default ``'wbf'``) and its keyword arguments; WBF's
            default is ``iou_thr=0.55, skip_box_thr=0.0, conf_type='avg'``.
        weights (Sequence[float], optional): one weight per view, in ``TestTimeAug``'s
            order (the product of its transform lists, first list outermost).
        weights_from (str, optional): a checkpoint of a learned-weights ensemble (made by
            ``tools/analysis_tools/fit_ensemble.py --method learned`` on dumped per-view
            predictions, or by ``tools/train.py``): its learned member weights are the
            views' weights, and its WBF thresholds (``iou_thr``, ``skip_box_thr``,
            ``conf_type``) those of a WBF ``fusion`` that does not set them. Loaded
            weights-only (:func:`mmens.utils.safe_torch_load`).
        view_names (Sequence[str], optional): with ``weights_from``, the checkpoint's
            member name of each view (default: the checkpoint's members in order).
        max_per_img (int): detections kept per image (default 100, as ``DetTTAModel``).
        score_thr (float): fused scores below it are dropped (default 0).
        data_preprocessor (dict, optional): as mmengine's ``BaseTTAModel``.
    """

    def __init__(self, module, fusion: Optional[dict] = None,
                 weights: Optional[Sequence[float]] = None, weights_from: Optional[str] = None,
                 view_names: Optional[Sequence[str]] = None, max_per_img: int = 100,
                 score_thr: float = 0.0, data_preprocessor: Optional[dict] = None) -> None:
        if weights is not None and weights_from is not None:
            raise ValueError('EnsembleTTAModel: give weights or weights_from, not both')
        learned = None
        if weights_from is not None:
            weights, learned = load_view_weights(weights_from, view_names)
        elif view_names is not None:
            raise ValueError('EnsembleTTAModel: view_names names the members of '
                             'weights_from, which is not given')
        self.method, self.fusion_cfg = check_fusion(fusion, learned)
        if weights is not None and (len(weights) == 0 or min(weights) <= 0):
            raise ValueError(f'EnsembleTTAModel: weights must be positive, got {list(weights)}')
        if int(max_per_img) < 1 or not 0.0 <= float(score_thr) <= 1.0:
            raise ValueError(f'EnsembleTTAModel: max_per_img >= 1 and score_thr in [0, 1], '
                             f'got {max_per_img} and {score_thr}')
        super().__init__(module, data_preprocessor=data_preprocessor)
        self.view_weights = None if weights is None else [float(w) for w in weights]
        self.max_per_img, self.score_thr = int(max_per_img), float(score_thr)

    def merge_preds(self, data_samples_list: List[Sequence[DetDataSample]]
                    ) -> List[DetDataSample]:
        """Merge the views of each image of the batch into one prediction.

        Args:
            data_samples_list (list[list[DetDataSample]]): per image, its views' samples
                (in ``TestTimeAug``'s order), each with ``pred_instances`` in the original
                image's pixels.

        Returns:
            list[DetDataSample]: per image, its first view's sample holding the fused
            ``pred_instances``.
        """
        num_views = len(data_samples_list[0])
        for samples in data_samples_list:
            if samples[0].pred_instances.get('masks', None) is not None:
                raise ValueError('EnsembleTTAModel merges boxes: its detector predicts '
                                 'masks (instance-mask fusion: fuse_results.py)')
        weights = self._weights(num_views, data_samples_list[0][0].pred_instances.bboxes)
        cols = [(unflipped_boxes(s), s.pred_instances.scores, s.pred_instances.labels,
                 v, b) for b, samples in enumerate(data_samples_list)
                for v, s in enumerate(samples)]  # per view of each image, not per box
        boxes = torch.cat([c[0].reshape(-1, 4) for c in cols])  # [M, 4]
        device = boxes.device
        scores = torch.cat([c[1] for c in cols]).to(boxes.dtype)  # [M]
        labels = torch.cat([c[2] for c in cols]).long()  # [M]
        counts = torch.tensor([len(c[1]) for c in cols], device=device)  # [B * V]
        views = torch.tensor([c[3] for c in cols], device=device).repeat_interleave(counts)
        images = torch.tensor([c[4] for c in cols], device=device).repeat_interleave(counts)
        sizes = torch.tensor([s[0].metainfo['ori_shape'][::-1] for s in data_samples_list],
                             dtype=boxes.dtype, device=device)  # [B, 2] (width, height)
        merged = merge_views(boxes, scores, labels, views, images, sizes, num_views,
                             self.method, weights, self.max_per_img, self.score_thr,
                             **self.fusion_cfg)
        out = []
        for samples, (b, s, l) in zip(data_samples_list, merged):
            sample = samples[0]
            inst = sample.pred_instances.new(bboxes=b, scores=s, labels=l)
            sample.pred_instances = inst
            out.append(sample)
        return out

    def _weights(self, num_views: int, like: Tensor) -> Optional[Tensor]:
        if self.view_weights is None:
            return None
        if len(self.view_weights) != num_views:
            raise ValueError(f'EnsembleTTAModel: {len(self.view_weights)} view weights for '
                             f"{num_views} views of the tta_pipeline's TestTimeAug")
        like = like.tensor if hasattr(like, 'tensor') else like
        return torch.tensor(self.view_weights, dtype=torch.float32, device=like.device)


def load_view_weights(checkpoint: str, view_names: Optional[Sequence[str]] = None
                      ) -> Tuple[List[float], dict]:
    """The learned member weights of a learned-weights ensemble checkpoint, per view, and
    its WBF thresholds.

    The checkpoint (weights-only, :func:`mmens.utils.safe_torch_load`) carries its config;
    its model is built and loaded, and its head's ``member_weights()`` and the model's
    ``fusion_cfg()`` are read.

    Args:
        checkpoint (str): path of the checkpoint.
        view_names (Sequence[str], optional): the member name of each view (default:
            the checkpoint's members, in order).

    Returns:
        tuple: ``(weights, thresholds)``: one weight per view, and ``iou_thr``,
        ``skip_box_thr``, ``conf_type``.
    """
    from mmengine.config import Config

    from mmens.utils import safe_torch_load
    ckpt = safe_torch_load(checkpoint, map_location='cpu')
    text = ckpt.get('meta', {}).get('cfg') if isinstance(ckpt, dict) else None
    if not text:
        raise ValueError(f'weights_from {checkpoint}: carries no config (not a checkpoint '
                         'of fit_ensemble.py or tools/train.py)')
    cfg = Config.fromstring(text, file_format='.py').model
    model = MODELS.build(cfg)
    head = getattr(model, 'head', None)
    if not hasattr(head, 'member_weights'):
        raise ValueError(f'weights_from {checkpoint}: its model {cfg.type} has no learned '
                         'member weights (make it with fit_ensemble.py --method learned)')
    missing, unexpected = model.load_state_dict(ckpt.get('state_dict', ckpt), strict=False)
    missing = [k for k in missing if not k.startswith('data_preprocessor')]
    if missing or unexpected:
        raise ValueError(f'weights_from {checkpoint}: does not fit its own config (missing '
                         f'{missing[:3]}, unexpected {unexpected[:3]})')
    weights = model.eval().head.member_weights().tolist()
    thresholds = model.fusion_cfg()
    if view_names is None:
        return weights, thresholds
    members = list(model.members)
    unknown = [v for v in view_names if v not in members]
    if unknown:
        raise ValueError(f'weights_from {checkpoint}: view_names {unknown} are not among '
                         f'its members {members}')
    return [weights[members.index(v)] for v in view_names], thresholds
