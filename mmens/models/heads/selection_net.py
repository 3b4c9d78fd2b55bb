"""e2e-CEL selection net: scores ĉ ∈ R^N of the members, per image (docs/theory.md §5.1)."""
from typing import Optional, Sequence

import torch
from mmens.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmens.ops.selection_features import probe_feature_names, selection_feature_names


@MODELS.register_module()
class MemberSelectionNet(BaseModule):
    """``ĉ = b + g_φ(z)``: per-image member scores from what the selection may read.

    ``z`` is any of (a) the features of the *probe* members' detections and of the image
    size (:func:`mmens.ops.selection_features.probe_features`; the probes run on every
    image, the other members only when selected), (b) globally pooled features of a small
    mmdet backbone on the image, (c) the meta-features of every member's predictions
    (:func:`mmens.ops.selection_features.selection_features`: box counts, score statistics,
    agreement), which need every member to run first: an accuracy mode, whose cost is
    every member (``CELDetector`` refuses it under a time budget).

    The output layer starts at zero, so ``ĉ`` starts at ``b`` (``init_scores``, e.g. the
    best fixed subset of the training images), and training learns per-image deviations.

    Args:
        num_members (int): N.
        num_probes (int): P, the probes whose detections are read (``CELDetector`` fills
            it in from its ``probes``); 0: none.
        num_classes (int): length of each probe's class histogram.
        use_meta (bool): use every member's meta-features (c).
        image_backbone (dict, optional): an mmdet backbone config (e.g. a narrow ResNet);
            its last feature map is average-pooled.
        image_channels (int, optional): channels of that last map (required with a backbone).
        hidden (int): width of the hidden layer.
        init_scores (Sequence[float], optional): ``b`` ([N]); default all equal.
    """

    def __init__(self, num_members: int, num_probes: int = 0, num_classes: int = 80,
                 use_meta: bool = False, image_backbone: Optional[dict] = None,
                 image_channels: Optional[int] = None, hidden: int = 32,
                 init_scores: Optional[Sequence[float]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not use_meta and image_backbone is None and num_probes == 0:
            raise ValueError('MemberSelectionNet: read probes (CELDetector probes=[...]), an '
                             'image backbone, or every member (use_meta=True)')
        if image_backbone is not None and not image_channels:
            raise ValueError('MemberSelectionNet: image_backbone needs image_channels')
        self.num_members, self.use_meta = num_members, use_meta
        self.num_probes, self.num_classes = int(num_probes), int(num_classes)
        self.num_meta = len(selection_feature_names(num_members)) if use_meta else 0
        self.num_probe_features = len(probe_feature_names(
            self.num_probes, self.num_classes)) if self.num_probes else 0
        self.backbone = MODELS.build(image_backbone) if image_backbone is not None else None
        in_features = self.num_meta + self.num_probe_features + (
            int(image_channels) if self.backbone is not None else 0)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_members))
        nn.init.zeros_(self.mlp[2].weight)
        # the warm start, for the anchor on how far training moves ĉ; saved, so that a
        # resumed training keeps its anchor (the warm start is computed before training)
        self.register_buffer('init_scores', torch.ones(num_members))
        self.set_init_scores(torch.ones(num_members) if init_scores is None else init_scores)

    @torch.no_grad()
    def set_init_scores(self, prior) -> None:
        """Start ĉ at ``prior`` and anchor it there (``init_scores``).

        The output layer's weight is zero until training moves it, so its bias *is* ĉ
        before the first step.

        Args:
            prior (Tensor | Sequence[float]): ``[N]`` scores of the members.
        """
        b = torch.as_tensor(prior, dtype=self.init_scores.dtype,
                            device=self.init_scores.device)
        if b.shape != (self.num_members, ):
            raise ValueError(f'MemberSelectionNet: init_scores has {b.numel()} values for '
                             f'{self.num_members} members')
        self.mlp[2].bias.copy_(b)
        self.init_scores.copy_(b)

    def forward(self, meta: Optional[Tensor] = None, img: Optional[Tensor] = None,
                probe: Optional[Tensor] = None) -> Tensor:
        """Member scores.

        Args:
            meta (Tensor, optional): ``[B, 4N + 2]`` meta-features of every member.
            img (Tensor, optional): ``[B, 3, H, W]`` preprocessed images.
            probe (Tensor, optional): ``[B, P * (8 + num_classes) + 2]`` probe features.

        Returns:
            Tensor[B, N]: ĉ.
        """
        parts = []
        if self.use_meta:
            if meta is None:
                raise ValueError('MemberSelectionNet: meta-features are required')
            parts.append(meta)
        if self.num_probes:
            if probe is None:
                raise ValueError('MemberSelectionNet: probe features are required')
            parts.append(probe)
        if self.backbone is not None:
            if img is None:
                raise ValueError('MemberSelectionNet: this net reads images; load them in the '
                                 'pipeline (LoadImageFromFile) and set the data preprocessor')
            feats = self.backbone(img)
            feats = feats[-1] if isinstance(feats, (tuple, list)) else feats
            parts.append(feats.mean(dim=(2, 3)))  # [B, C]
        return self.mlp(torch.cat(parts, dim=1))  # [B, N]
