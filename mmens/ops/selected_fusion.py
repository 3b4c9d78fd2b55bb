"""WBF's fused output of the clusters when only some members are selected (differentiable)."""
from typing import Optional, Tuple

from torch import Tensor

from .clustering import Clusters


def selected_fusion(clusters: Clusters, select: Tensor, weights: Tensor,
                    eps: float = 1e-6, box_index: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor]:
    """WBF's fused boxes and scores of the clusters, using only the selected members.

    Differentiable in ``select`` (hard 0/1 or soft): with ``S_ci`` member i's summed score
    in cluster c and ``x = select[image of c]``, the score is ``Σ x_i w_i S_ci / Σ x_i w_i``
    (WBF's ``avg`` confidence over the selected members) and the box is the
    ``x_i w_i S_ci``-weighted mean of the members' boxes.

    Args:
        clusters (Clusters): ``C`` clusters of all members (``y_hat [C, N, 5]``).
        select (Tensor): ``[..., B, N]`` selection per image (leading dims: several
            selections at once, e.g. ``[U, B, N]``).
        weights (Tensor): ``[N]`` member weights.
        box_index (Tensor, optional): ``[K]`` the clusters whose boxes are needed (a loss
            reads the boxes of matched clusters only; the boxes cost 4x the scores).

    Returns:
        boxes ``[..., C, 4]`` (``[..., K, 4]`` with ``box_index``) and scores ``[..., C]``
        (0 where no selected member has a box).
    """
    x = select[..., clusters.image_index, :] * weights  # [..., C, N]
    summed = clusters.y_hat[..., 4] * clusters.counts.to(x.dtype)  # [C, N]
    mass = x * summed  # [..., C, N]
    scores = mass.sum(-1) / x.sum(-1).clamp_min(eps)  # [..., C]
    y_box = clusters.y_hat[..., :4]  # [C, N, 4]
    if box_index is not None:
        mass, y_box = mass[..., box_index, :], y_box[box_index]  # [..., K, N], [K, N, 4]
    boxes = (mass[..., None] * y_box).sum(-2) / mass.sum(
        -1, keepdim=True).clamp_min(eps)  # [..., C or K, 4]
    return boxes, scores.clamp(0.0, 1.0)
