"""Tests for mmens.ops.features: per-cluster features for a rescoring / Θ net."""
import math

import pytest
import torch

from mmens.ops.features import cluster_features, feature_names

D = torch.float64


def hand_case():
    """Image 5: c0 (cls 0, .9), c1 (cls 0, .6), c2 (cls 1, .8); image 2: c3 (cls 0, .1)."""
    z = [0., 0., 0., 0., 0.]
    y_hat = torch.tensor([
        [[0, 0, .5, .5, .9], [0, 0, .5, .25, .7]],
        [z, [0, 0, .5, .25, .6]],
        [[0, 0, .25, .5, .8], z],
        [[.25, 0, .75, .5, .1], z],
    ], dtype=D)
    mask = torch.tensor([[1, 1], [0, 1], [1, 0], [1, 0]], dtype=torch.bool)
    counts = torch.tensor([[1, 2], [0, 1], [1, 0], [1, 0]])
    fused = torch.tensor([[0, 0, .5, .5], [0, 0, .5, .25], [0, 0, .25, .5], [0, 0, .5, .5]],
                         dtype=D)
    return dict(y_hat=y_hat, mask=mask, labels=torch.tensor([0, 0, 1, 0]),
                image_index=torch.tensor([5, 5, 5, 2]), fused_boxes=fused,
                fused_scores=torch.tensor([.9, .6, .8, .1], dtype=D), counts=counts,
                num_members=2)


def test_names_and_shapes():
    for n in (1, 2, 5):
        assert len(feature_names(n)) == 3 * n + 11
        assert len(set(feature_names(n))) == 3 * n + 11
    f = cluster_features(**hand_case())
    assert f.shape == (4, len(feature_names(2))) and f.dtype == D
    with pytest.raises(ValueError):
        feature_names(0)


def test_hand_values():
    f = cluster_features(**hand_case())
    lg = math.log
    expect = [
        # s0, s1, p0, p1, frac, bpm, iou0, iou1, wbf, max, mean, log_area, log_aspect,
        # sup_same, sup_other, rank_frac, log1p_rank
        [.9, .7, 1, 1, 1, 1.5, 1, .5, .9, .9, .8, lg(.25), 0, 0, 0, 0, 0],
        [0, .6, 0, 1, .5, .5, 0, 1, .6, .6, .6, lg(.125), lg(2), .5, 1 / 3, 2 / 3, lg(3)],
        [.8, 0, 1, 0, .5, .5, 1, 0, .8, .8, .8, lg(.125), lg(.5), 0, .5, 1 / 3, lg(2)],
        [.1, 0, 1, 0, .5, .5, 1 / 3, 0, .1, .1, .1, lg(.25), 0, 0, 0, 0, 0],  # own image
    ]
    torch.testing.assert_close(f, torch.tensor(expect, dtype=D))


def test_empty_and_degenerate():
    case = hand_case()
    empty = {k: (v[:0] if torch.is_tensor(v) else v) for k, v in case.items()}
    f = cluster_features(**empty)
    assert f.shape == (0, 17)
    case['fused_boxes'] = torch.zeros(4, 4, dtype=D)  # zero-area boxes stay finite
    case['mask'] = torch.zeros(4, 2, dtype=torch.bool)  # and clusters with no member
    assert torch.isfinite(cluster_features(**case)).all()


def test_shape_errors():
    case = hand_case()
    with pytest.raises(ValueError, match='y_hat'):
        cluster_features(**{**case, 'num_members': 3})
    with pytest.raises(ValueError, match='counts'):
        cluster_features(**{**case, 'counts': case['counts'][:3]})
    with pytest.raises(ValueError, match='image_index'):
        cluster_features(**{**case, 'image_index': case['image_index'][:, None]})


def random_case(seed, c=300, n=3, n_img=7):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(c, n, 2, generator=g) * 0.6
    y_hat = torch.cat([xy, xy + torch.rand(c, n, 2, generator=g) * 0.3 + 0.01,
                       torch.rand(c, n, 1, generator=g)], -1)
    mask = torch.rand(c, n, generator=g) < 0.6
    y_hat = y_hat * mask.unsqueeze(-1)
    fused = y_hat[..., :4].sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    scores = torch.rand(c, generator=g).round(decimals=1)  # many ties
    return dict(y_hat=y_hat, mask=mask, labels=torch.randint(0, 3, (c,), generator=g),
                image_index=torch.randint(0, n_img, (c,), generator=g), fused_boxes=fused,
                fused_scores=scores, counts=mask.long() * 2, num_members=n)


def reference_suppression(case):
    """Loop reference for sup_same, sup_other, rank_frac, log1p_rank."""
    from mmens.ops.boxes import box_iou
    b, s, lab, img = (case[k] for k in ('fused_boxes', 'fused_scores', 'labels', 'image_index'))
    out = torch.zeros(len(s), 4)
    for i in range(len(s)):
        same_img = [j for j in range(len(s)) if img[j] == img[i]]
        higher = [j for j in same_img if (s[j] > s[i]) or (s[j] == s[i] and j < i)]
        for j in higher:
            iou = box_iou(b[i:i + 1], b[j:j + 1])[0, 0]
            k = 0 if lab[j] == lab[i] else 1
            out[i, k] = max(out[i, k], iou)
        out[i, 2] = len(higher) / len(same_img)
        out[i, 3] = math.log1p(len(higher))
    return out


@pytest.mark.parametrize('seed', [0, 1])
def test_suppression_reference_chunking_determinism(seed):
    case = random_case(seed)
    f = cluster_features(**case)
    torch.testing.assert_close(f[:, -4:], reference_suppression(case))
    torch.testing.assert_close(cluster_features(**case, budget=100), f, rtol=0, atol=0)
    torch.testing.assert_close(cluster_features(**case), f, rtol=0, atol=0)
    assert torch.isfinite(f).all()
